"""Data-parallel fine-tuning: `torchrun --nproc_per_node=2` with gloo on CPU equals one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from recovery_data import tiny_cnn

torch = pytest.importorskip("torch")

from onnxprune.api import prune  # noqa: E402
from onnxprune.torch import export_onnx  # noqa: E402


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A pruned 2-conv CNN and 96 labelled 8x8 images."""
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    net = tiny_cnn(8, 3).eval()
    export_onnx(net, torch.zeros(1, 3, 8, 8), root / "original.onnx")
    onnx.save(prune(root / "original.onnx", "l1", 0.5).model, str(root / "pruned.onnx"))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    x = rng.standard_normal((100, 3, 8, 8)).astype(np.float32)
    x[np.arange(100), y] += 1.0
    np.savez(root / "train.npz", x=x, y=y)
    return root


def _finetune(root, out, nproc: int | None):
    args = [
        "finetune",
        str(root / "pruned.onnx"),
        "--data",
        str(root / "train.npz"),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--teacher",
        str(root / "original.onnx"),
        "-o",
        str(out),
    ]
    prefix = (
        [sys.executable, "-m", "onnxprune"]
        if nproc is None
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "onnxprune",
        ]
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(prefix + args, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_processes_equal_one(tiny):
    single = _finetune(tiny, tiny / "single.onnx", None)
    assert single.returncode == 0, single.stderr
    ddp = _finetune(tiny, tiny / "ddp.onnx", 2)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    before, one, two = _weights(tiny / "pruned.onnx"), _weights(tiny / "single.onnx"), _weights(tiny / "ddp.onnx")
    assert len(one) == len(two) > 0
    for name in sorted(one):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
    moved = sum(float(np.abs(a).sum()) for a in one.values()) - sum(float(np.abs(a).sum()) for a in before.values())
    assert moved != 0.0  # training changed the weights


def test_batch_must_split_evenly(tiny):
    out = tiny / "odd.onnx"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "onnxprune",
        "finetune",
        str(tiny / "pruned.onnx"),
        "--data",
        str(tiny / "train.npz"),
        "--epochs",
        "1",
        "--batch-size",
        "15",
        "-o",
        str(out),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode != 0
    assert "must be divisible by the 2 processes" in done.stderr
    assert not out.exists()
