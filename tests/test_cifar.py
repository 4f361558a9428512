"""The real pretrained CIFAR-10 ResNets from ../shared: accuracy before pruning matches the
published measurement; pruning at 0.5 with l1 verifies; accuracy after is reported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.model.runtime import run_model

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EXPECTED_TOP1 = {"resnet20": 0.915, "resnet56": 0.926}


@pytest.fixture(scope="module")
def cifar(shared_dir):
    folder = shared_dir / "data" / "cifar10"
    if not (folder / "test1000.npz").exists():
        pytest.skip("../shared/data/cifar10 is not available")
    data = np.load(folder / "test1000.npz")
    images = ((data["x"].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    return folder, np.ascontiguousarray(images), data["y"]


def top1(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    logits = run_model(model, {"input": images}, optimize=True)["logits"]
    return float(np.mean(logits.argmax(axis=1) == labels))


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_prune_real_resnet(name, cifar, record_property):
    folder, images, labels = cifar
    path = folder / f"{name}.onnx"
    before = top1(onnx.load(path), images, labels)
    assert before == pytest.approx(EXPECTED_TOP1[name], abs=1e-9)
    result = onnxprune.prune(path, criterion="l1", ratio=0.5)
    assert result.report["verification"]["ok"]
    assert 0.2 < result.report["macs_ratio"] < 0.3
    prunable = [g for g in result.report["groups"] if g["frozen"] is None]
    assert prunable and all(g["kept"] == g["channels"] - g["channels"] // 2 for g in prunable)
    after = top1(result.model, images, labels)
    record_property(f"{name}_top1_after_l1_0.5", after)
    print(
        f"{name}: top-1 {before:.1%} -> {after:.1%} after l1 at 0.5, no fine-tuning; "
        f"MACs kept {result.report['macs_ratio']:.1%}"
    )
    assert 0.0 <= after < before


@pytest.mark.parametrize("criterion", ["l1", "random", "fpgm"])
def test_every_layer_keeps_its_share_whatever_the_criterion(cifar, criterion):
    """ResNet-20's three residual stages are one group (option-A padding embeds each stage's
    channels in the next); every convolution must still keep (1 - ratio) of its filters."""
    folder, _, _ = cifar
    for ratio in (0.3, 0.5):
        result = onnxprune.prune(folder / "resnet20.onnx", criterion=criterion, ratio=ratio, verify=False)
        filters = [
            (e["shape"][0], len(e["kept"]["0"]))
            for e in result.plan["weights"].values()
            if len(e["shape"]) == 4 and "0" in e["kept"]
        ]
        assert len(filters) == 19  # every convolution: the stem and 18 in the residual blocks
        assert all(kept == size - int(ratio * size) for size, kept in filters), filters
