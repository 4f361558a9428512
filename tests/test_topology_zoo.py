"""Issue-3 topologies (DenseNet, Inception, SqueezeNet, MobileNetV3/EfficientNet, RegNet, U-Net,
YOLOv8 neck, ConvNeXt, ShuffleNetV2), both exporters, every weight criterion at ratio 0.5:
verified against the masked reference; the frozen groups are exactly the expected ones."""

from __future__ import annotations

import onnx
import pytest
from zoo import TOPOLOGY_ZOO

import onnxprune
from onnxprune.api import load_and_analyze
from onnxprune.report.document import prunable_share

IO = {"reaches graph input", "reaches graph output"}
LAYER_NORM = "normalized together by LayerNormalization"
SHUFFLE = "splits channels into"
CHANNELS_FIRST_NORM = "not mapped through ReduceMean"

#: Kinds of frozen reasons per model, and why beyond the graph's input/output.
EXPECTED_FROZEN = {
    "densenet": IO,
    "inception": IO,
    "squeezenet_fire": IO,
    "mobilenet_v3_block": IO,
    "regnet_block": IO,
    "unet": IO,
    "yolov8_neck": IO,
    # The residual stream of ConvNeXt is normalized over its channels (LayerNorm, and the
    # hand-written channels-first LayerNorm of the stem/downsampling = ReduceMean over C): its
    # width cannot change without changing the statistics. The MLP widths stay prunable.
    "convnext_block": IO | {LAYER_NORM, CHANNELS_FIRST_NORM},
    # A channel shuffle reorders channels across the two branches; only per-branch convs prune.
    "shufflenet_unit": IO | {SHUFFLE},
}
KINDS = sorted(IO | {LAYER_NORM, SHUFFLE, CHANNELS_FIRST_NORM})
CRITERIA = ("l1", "l2", "fpgm", "random")


def reason_kind(reason: str) -> str:
    kinds = [k for k in KINDS if k in reason]
    assert kinds, f"unexpected frozen reason: {reason}"
    return kinds[0]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(TOPOLOGY_ZOO))
def test_frozen_groups_and_prunable_share(zoo_model, name, exporter):
    analysis = load_and_analyze(zoo_model(name, exporter))
    kinds = {reason_kind(g.frozen) for g in analysis.groups if g.frozen}
    assert kinds == EXPECTED_FROZEN[name]
    assert prunable_share(analysis.groups, analysis.view) >= 0.5


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(TOPOLOGY_ZOO))
def test_prune_topology(zoo_model, name, exporter, criterion):
    result = onnxprune.prune(zoo_model(name, exporter), criterion=criterion, ratio=0.5)
    assert result.report["verification"]["ok"]
    prunable = [g for g in result.report["groups"] if g["frozen"] is None]
    assert prunable and all(g["kept"] < g["channels"] for g in prunable)
    assert result.report["macs_ratio"] < 0.75


@pytest.mark.parametrize("name", sorted(TOPOLOGY_ZOO))
def test_bn_scale_on_kept_batchnorm(zoo_model, name):
    path = zoo_model(name, "torchscript_bn")
    if not any(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node):
        with pytest.raises(onnxprune.InputError, match="bn_scale needs BatchNormalization"):
            onnxprune.prune(path, criterion="bn_scale")
        return
    result = onnxprune.prune(path, criterion="bn_scale", ratio=0.5)
    assert result.report["verification"]["ok"]


def test_yolov8_chunk_bounds_are_rewritten(zoo_model):
    """torch.chunk exports as Slice with Shape-computed bounds (TorchScript) or Split (dynamo)."""
    for exporter, op in (("torchscript", "Slice"), ("dynamo", "Split")):
        result = onnxprune.prune(zoo_model("yolov8_neck", exporter), ratio=0.5)
        assert any(n.op_type == op for n in result.model.graph.node)
        assert result.report["verification"]["ok"]


def test_grouped_conv_group_counts_halve(zoo_model):
    path = zoo_model("regnet_block", "dynamo")

    def group_counts(model):
        return {
            n.name: a.i
            for n in model.graph.node
            if n.op_type == "Conv"
            for a in n.attribute
            if a.name == "group" and a.i > 1
        }

    before = group_counts(onnx.load(path))
    after = {
        n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
        for n in onnxprune.prune(path, ratio=0.5).model.graph.node
        if n.name in before
    }
    assert sorted(before.values()) == [2, 4, 4, 8, 8]
    assert after == {name: count // 2 for name, count in before.items()}
