"""The test model zoo itself: every model, every exporter, ONNX Runtime == torch."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
from cli_helpers import sha
from zoo import EXPORTERS, TOPOLOGY_ZOO, ZOO, build, ort_matches_torch, single_thread

import onnxprune


def _ops(path) -> collections.Counter:
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_export_matches_torch(zoo_model, name, exporter):
    path = zoo_model(name, exporter)
    assert path.is_file()
    module, shape = build(name)
    ort_matches_torch(module, path, shape, batches=(1, 3), atol=1e-4)

    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "batch axis should be symbolic"
    opset = {o.domain: o.version for o in model.opset_import}[""]
    ops = _ops(path)
    if exporter == "dynamo":
        assert opset >= 18
        assert path.with_name(path.name + ".data").is_file()
    else:
        assert opset == 17
    assert ("BatchNormalization" in ops) == (exporter == "torchscript_bn")


def test_pruning_leaves_its_input_untouched(zoo_model):
    """prune() never writes to its input: a model file and its external data stay byte-identical,
    nothing is written beside them, and a ModelProto passed in is not modified. (The zoo fixture
    shares one file per model and exporter for the whole session on the strength of this.)"""
    path = zoo_model("flatten_head_cnn", "dynamo")
    files = sorted(path.parent.iterdir())
    assert path.with_name(path.name + ".data") in files
    before = [sha(f) for f in files]
    assert onnxprune.prune(path, ratio=0.5).report["verification"]["ok"]
    assert sorted(path.parent.iterdir()) == files and [sha(f) for f in files] == before

    model = onnx.load(str(path))
    serialized = model.SerializeToString()
    assert onnxprune.prune(model, ratio=0.5).report["verification"]["ok"]
    assert model.SerializeToString() == serialized


def test_factories_are_deterministic_and_not_degenerate():

    for name, factory in ZOO.items():
        m1, _ = check_deterministic_and_alive(factory, name)
        assert [m for m in m1.modules() if isinstance(m, torch.nn.BatchNorm2d)], name


def test_architecture_landmarks(zoo_model):
    a = _ops(zoo_model("resnet20_a", "torchscript"))
    assert a["Conv"] == 19 and a["Add"] == 9 and a["Pad"] == 2  # option A: no shortcut convs
    b = _ops(zoo_model("resnet20_b", "torchscript"))
    assert b["Conv"] == 21 and b["Add"] == 9 and "Pad" not in b  # option B: 2 projections
    r50 = _ops(zoo_model("resnet50", "torchscript"))
    assert r50["Conv"] == 1 + 16 * 3 + 4 and r50["Add"] == 16  # stem + 16 bottlenecks + 4 ds
    vgg = _ops(zoo_model("vgg16_bn", "torchscript"))
    assert vgg["Conv"] == 13 and vgg["MaxPool"] == 5 and vgg["Gemm"] == 2
    mb = onnx.load(str(zoo_model("mobilenet_v2", "torchscript")))
    depthwise = [
        n for n in mb.graph.node
        if n.op_type == "Conv" and any(at.name == "group" and at.i > 1 for at in n.attribute)
    ]  # fmt: skip
    assert len(depthwise) == 17 and _ops(zoo_model("mobilenet_v2", "torchscript"))["Add"] == 10
    f = _ops(zoo_model("flatten_head_cnn", "torchscript"))
    assert f["Flatten"] == 1 and f["Gemm"] == 2
    fd = _ops(zoo_model("flatten_head_cnn", "dynamo"))
    assert fd["Reshape"] == 1 and "Flatten" not in fd  # the dynamo exporter flattens by Reshape


# --------------------------------------------------------------------------------------------
# TOPOLOGY_ZOO: multi-branch models (concat, split, shuffle, SE, grouped, upsampling, LN)
# --------------------------------------------------------------------------------------------

# (name, exporter) -> reason, for combinations torch 2.13 cannot export. None so far: every
# TOPOLOGY_ZOO model exports with all three exporters, dynamic batch included.
TOPOLOGY_EXPORT_FAILURES: dict[tuple[str, str], str] = {}


def _bn_count(module) -> int:

    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TOPOLOGY_ZOO))
def test_topology_export_matches_torch(zoo_model, name, exporter):
    if (name, exporter) in TOPOLOGY_EXPORT_FAILURES:
        pytest.skip(TOPOLOGY_EXPORT_FAILURES[name, exporter])
    path = zoo_model(name, exporter)
    module, shape = build(name)
    ort_matches_torch(module, path, shape, batches=(1, 3), atol=1e-4)

    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= 18 if exporter == "dynamo" else opset == 17
    bn = _ops(path)["BatchNormalization"]
    if exporter == "torchscript_bn":
        assert bn == _bn_count(module)
    else:  # folded into the conv before it; DenseNet's pre-activation BNs follow a Concat
        assert bn == TOPOLOGY_LANDMARKS[name].get("unfolded_bn", 0)


def _conv_groups(path) -> list[int]:
    model = onnx.load(str(path), load_external_data=False)
    return [next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node if n.op_type == "Conv"]


def _initializer_shapes(path) -> dict[str, list[int]]:
    """Values of small int64 initializers / Constant nodes (Reshape shapes, Split sizes)."""
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    vals = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT64}
    vals.update({n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"})
    return {k: numpy_helper.to_array(v).tolist() for k, v in vals.items()}


# Op counts each exporter emits (what the graph analysis has to understand); "ts" = both
# TorchScript exports, "dynamo" = the dynamo export. Only distinctive ops are listed.
TOPOLOGY_LANDMARKS: dict[str, dict] = {
    "densenet": dict(
        unfolded_bn=8,  # 6 dense-layer norm1 + transition + norm5: each follows a Concat
        ts={"Concat": 7, "Conv": 14, "AveragePool": 1},  # cat([x]) of one tensor: a Concat too
        dynamo={"Concat": 6, "Conv": 14, "AveragePool": 1},
    ),
    "inception": dict(
        ts={"Concat": 2, "Conv": 14, "MaxPool": 3, "AveragePool": 1},
        dynamo={"Concat": 2, "Conv": 14, "MaxPool": 3, "AveragePool": 1},
    ),
    "squeezenet_fire": dict(
        ts={"Concat": 4, "Conv": 14, "MaxPool": 2},
        dynamo={"Concat": 4, "Conv": 14, "MaxPool": 2},
    ),
    "mobilenet_v3_block": dict(
        ts={"HardSigmoid": 3, "HardSwish": 7, "Sigmoid": 4, "Mul": 7, "Add": 3, "GlobalAveragePool": 5},
        dynamo={"HardSigmoid": 3, "HardSwish": 7, "Sigmoid": 4, "Mul": 7, "Add": 3, "ReduceMean": 5},
        grouped=[8, 24, 36, 48, 64, 64],  # the depthwise convs
    ),  # fmt: skip
    "regnet_block": dict(
        ts={"Add": 5, "Mul": 2, "Sigmoid": 2, "Conv": 23},
        dynamo={"Add": 5, "Mul": 2, "Sigmoid": 2, "Conv": 23},
        grouped=[2, 4, 4, 8, 8],
    ),
    "unet": dict(
        ts={"ConvTranspose": 1, "Resize": 1, "Concat": 2, "MaxPool": 2},
        dynamo={"ConvTranspose": 1, "Resize": 1, "Concat": 2, "MaxPool": 2},
    ),
    "yolov8_neck": dict(
        # chunk: 2 Slices with Shape-computed bounds (ts) vs one 2-output Split (dynamo);
        # 2 more ts Concats build the view(N, 20, -1) shapes
        ts={"Slice": 8, "Concat": 12, "MaxPool": 3, "Resize": 1, "Reshape": 2, "Sigmoid": 28},
        dynamo={"Split": 4, "Concat": 10, "MaxPool": 3, "Resize": 1, "Reshape": 2, "Sigmoid": 28},
    ),  # fmt: skip
    "convnext_block": dict(
        # GELU: Erf decomposition at opset 17, a Gelu node at opset 20; the hand-written
        # channels-first LN stays decomposed (2 ReduceMean each) in both
        ts={"LayerNormalization": 5, "Erf": 4, "Transpose": 8, "MatMul": 8, "ReduceMean": 5, "Pow": 2, "Sqrt": 2},
        dynamo={"LayerNormalization": 5, "Gelu": 4, "Transpose": 8, "MatMul": 8, "ReduceMean": 5, "Pow": 2, "Sqrt": 2},
    ),  # fmt: skip
    "shufflenet_unit": dict(
        ts={"Transpose": 4, "Reshape": 8, "Slice": 4, "Concat": 12, "Shape": 18},
        dynamo={"Transpose": 4, "Reshape": 8, "Split": 2, "Concat": 4},
    ),
}


@pytest.mark.parametrize("name", sorted(TOPOLOGY_ZOO))
def test_topology_landmarks(zoo_model, name):
    expect = TOPOLOGY_LANDMARKS[name]
    for exporter, key in (("torchscript", "ts"), ("torchscript_bn", "ts"), ("dynamo", "dynamo")):
        if (name, exporter) in TOPOLOGY_EXPORT_FAILURES:
            continue
        path = zoo_model(name, exporter)
        ops = _ops(path)
        got = {op: ops[op] for op in expect[key]}
        assert got == expect[key], f"{name}/{exporter}: {dict(ops)}"
        groups = _conv_groups(path)
        if "grouped" in expect:
            assert [g for g in groups if g > 1] == expect["grouped"], groups
        if name == "shufflenet_unit" and exporter == "dynamo":
            # channel shuffle: Reshape [-1, 2, C/2, H, W] -> Transpose -> Reshape [-1, C, H, W]
            shapes = sorted(v for v in _initializer_shapes(path).values() if isinstance(v, list))
            assert [-1, 2, 8, 4, 4] in shapes and [-1, 16, 4, 4] in shapes, shapes
            assert [-1, 2, 16, 2, 2] in shapes and [-1, 32, 2, 2] in shapes, shapes
        if name == "unet":
            model = onnx.load(str(path), load_external_data=False)
            (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
            attrs = {a.name: a.s.decode() for a in resize.attribute if a.type == a.STRING}
            assert attrs["mode"] == "linear"
            assert attrs["coordinate_transformation_mode"] == "align_corners"


def test_topology_factories_are_deterministic_and_not_degenerate():

    assert not set(ZOO) & set(TOPOLOGY_ZOO)
    for name, factory in TOPOLOGY_ZOO.items():
        m1, s1 = check_deterministic_and_alive(factory, name)
        assert len(s1) == 4 and s1[0] == 1 and s1[2] <= 32 and s1[3] <= 32
        assert sum(p.numel() for p in m1.parameters()) <= 100_000, name


def check_deterministic_and_alive(factory, name):
    """Two builds are identical, BN statistics are not the defaults, and the output really
    depends on the input (the signal survives the depth). Returns one build."""
    (m1, s1), (m2, s2) = factory(), factory()
    assert s1 == s2 and not m1.training
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), f"{name}.{k} differs between two builds"
    for bn in (m for m in m1.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    with torch.no_grad(), single_thread():
        y = m1(torch.randn(8, *s1[1:], generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(y).all()
    assert y.std(0).mean() > 0.05 * y.std(), f"{name}: output barely depends on the input"
    return m1, s1
