"""The test model zoo itself: every model, every exporter, ONNX Runtime == torch."""

from __future__ import annotations

import collections

import onnx
import pytest

from zoo import EXPORTERS, ZOO, build, ort_matches_torch, single_thread


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


def test_zoo_model_is_cached(zoo_model):
    first = zoo_model("flatten_head_cnn", "torchscript")
    assert zoo_model("flatten_head_cnn", "torchscript") is first


def test_factories_are_deterministic_and_not_degenerate():
    import torch

    for name, factory in ZOO.items():
        (m1, s1), (m2, s2) = factory(), factory()
        assert s1 == s2 and not m1.training
        for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} differs between two builds"
        bns = [m for m in m1.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns, name
        for bn in bns:
            assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        # the output must really depend on the input (signal survives the depth)
        with torch.no_grad(), single_thread():
            y = m1(torch.randn(8, *s1[1:], generator=torch.Generator().manual_seed(0)))
        assert torch.isfinite(y).all()
        assert y.std(0).mean() > 0.05 * y.std(), f"{name}: output barely depends on the input"


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
