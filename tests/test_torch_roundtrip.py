"""onnxprune.torch: ONNX -> trainable torch module -> ONNX round trip on the zoo."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import onnxprune  # noqa: E402
from onnxprune.torch import OPS, export_onnx, to_torch  # noqa: E402
from zoo import TOPOLOGY_ZOO, ZOO  # noqa: E402

ALL = list(ZOO) + list(TOPOLOGY_ZOO)
DYNAMO = ["resnet20_a", "densenet", "yolov8_neck", "convnext_block", "shufflenet_unit", "unet"]
RTOL = 1e-5
#: ResNet-50 (53 convolutions) is deeper than float32 allows at 1e-5: ORT and torch are each
#: ~1-2e-5 (relative) away from a float64 evaluation of the same graph, so it gets 5e-5.
RTOL_FOR = {"resnet50": 5e-5}


def _input_shape(model: onnx.ModelProto, batch: int) -> tuple[int, ...]:
    inits = {t.name for t in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return (batch, *dims[1:])


def _ort(model, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} * {scale:.3g}"


def _torch_out(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _random_input(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(_input_shape(model, batch)).astype(np.float32)


@pytest.mark.parametrize(
    "name,exporter",
    [(n, "torchscript") for n in ALL] + [(n, "dynamo") for n in DYNAMO],
)
def test_matches_onnxruntime(zoo_model, name, exporter):
    path = zoo_model(name, exporter)
    model = onnx.load(str(path))
    module = to_torch(path)
    x = _random_input(model)
    _close(_torch_out(module, x), _ort(path, x), RTOL_FOR.get(name, RTOL))


@pytest.mark.parametrize("name", ["resnet20_a", "mobilenet_v2", "densenet", "convnext_block"])
def test_pruned_model_matches(zoo_model, name):
    pruned = onnxprune.prune(zoo_model(name, "torchscript"), ratio=0.5).model
    module = to_torch(pruned)
    x = _random_input(pruned)
    _close(_torch_out(module, x), _ort(pruned, x))


def test_parameters_keep_onnx_names(zoo_model):
    path = zoo_model("resnet20_b", "torchscript")
    module = to_torch(path)
    graph = onnxprune.api.load_and_analyze(path).model.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    params = module.onnx_parameters
    assert params and set(params) <= set(inits)
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    assert conv_weights <= set(params)
    for name, p in params.items():
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad
        np.testing.assert_array_equal(p.detach().numpy(), inits[name])
    assert {id(p) for p in params.values()} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize("name", ["resnet20_a", "convnext_block", "yolov8_neck", "unet"])
def test_train_step_and_reexport(zoo_model, tmp_path, name):
    path = zoo_model(name, "torchscript")
    module = to_torch(path)
    model = onnx.load(str(path))
    torch.manual_seed(0)
    x = torch.from_numpy(_random_input(model, seed=1))

    def loss_fn():
        out = module(x)
        return (out - 1.0).pow(2).mean()

    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    before = loss_fn()
    opt.zero_grad()
    before.backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    assert float(after) < float(before)

    out_path = tmp_path / f"{name}_trained.onnx"
    export_onnx(module, (x,), out_path)
    exported = onnx.load(str(out_path))
    assert [i.name for i in exported.graph.input] == module.input_names
    assert [o.name for o in exported.graph.output] == module.output_names
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    xn = x.numpy()
    _close(_ort(out_path, xn), _torch_out(module, xn))
    x3 = _random_input(model, batch=3, seed=2)  # another batch size: the batch axis is dynamic
    _close(_ort(out_path, x3), _torch_out(module, x3))


def test_unknown_op_raises():
    node = onnx.helper.make_node("NoSuchOp", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    from onnxprune.torch.convert import OnnxModule

    with pytest.raises(onnxprune.InputError, match="no torch translation for op NoSuchOp"):
        OnnxModule(model)
    assert "NoSuchOp" not in OPS
