"""onnxprune.torch: ONNX -> trainable torch module -> ONNX round trip on the zoo."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from zoo import TOPOLOGY_ZOO, ZOO  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.torch import OPS, export_onnx, to_torch  # noqa: E402

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
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_train_step_and_reexport(zoo_model, tmp_path, name, exporter):
    """Train one step and export again, for models from both exporters (dynamo: opset 18+,
    external data, shapes computed with Shape/Gather chains)."""
    path = zoo_model(name, exporter)
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
    assert after.item() < before.item()

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
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    from onnxprune.torch.convert import OnnxModule

    with pytest.raises(onnxprune.InputError, match="no torch translation for op NoSuchOp"):
        OnnxModule(model)
    assert "NoSuchOp" not in OPS


# ------------------------------------------------------------------------- single-op checks
# Ops / attributes the zoo does not reach, each as a one-node graph: torch == ORT.

H = onnx.helper
FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _i64(*v):
    return np.array(v, dtype=np.int64)


def _f32(*v):
    return np.array(v, dtype=np.float32)


_RNG = np.random.default_rng(3)
W_CT = _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
W_G = _RNG.standard_normal((5, 6)).astype(np.float32)

# (op, attrs, input shape, extra initializer inputs (name -> array; "" = missing), outputs)
SINGLE_OPS = [
    ("ConvTranspose", dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1]), (2, 4, 5, 5), {"w": W_CT}, 1),
    ("ConvTranspose", dict(strides=[2, 2], dilations=[2, 1], group=1), (2, 4, 5, 5), {"w": W_CT}, 1),
    (
        "Conv",
        dict(pads=[0, 1, 2, 1], strides=[2, 1], dilations=[1, 2]),
        (2, 3, 9, 9),
        {"w": _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)},
        1,
    ),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1), (2, 3, 8, 8), {}, 1),
    (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
        (2, 3, 7, 7),
        {},
        1,
    ),
    ("Gemm", dict(transA=1, transB=0, alpha=0.5, beta=2.0), (5, 3), {"b": W_G, "c": _f32(*range(6))}, 1),
    ("Split", dict(axis=1), (2, 6, 3), {"split": _i64(1, 2, 3)}, 3),
    ("Split", dict(axis=-1, num_outputs=3), (2, 3, 7), {}, 3),
    (
        "Slice",
        {},
        (4, 6, 8),
        {"starts": _i64(1, -1, 0), "ends": _i64(3, -100, 2**62), "axes": _i64(0, 1, 2), "steps": _i64(1, -2, 3)},
        1,
    ),
    ("Pad", dict(mode="constant"), (2, 3, 4, 4), {"pads": _i64(0, 0, 1, -1, 0, 1, 2, 0), "value": _f32(1.5)}, 1),
    ("Reshape", {}, (2, 3, 4), {"shape": _i64(0, -1, 2)}, 1),
    ("Reshape", dict(allowzero=1), (2, 3, 4), {"shape": _i64(2, 12)}, 1),
    ("Flatten", dict(axis=2), (2, 3, 4, 5), {}, 1),
    ("Flatten", dict(axis=0), (2, 3, 4), {}, 1),
    ("Transpose", {}, (2, 3, 4), {}, 1),
    ("Softmax", dict(axis=1), (2, 5, 3), {}, 1),
    ("LeakyRelu", dict(alpha=0.2), (2, 7), {}, 1),
    ("Tanh", {}, (2, 7), {}, 1),
    ("Gelu", dict(approximate="tanh"), (2, 7), {}, 1),
    ("HardSigmoid", dict(alpha=0.3, beta=0.4), (2, 7), {}, 1),
    ("Clip", {}, (2, 7), {"min": np.array(-0.5, np.float32)}, 1),
    ("Dropout", {}, (2, 7), {}, 1),
    ("Pow", {}, (2, 7), {"e": np.array(3.0, np.float32)}, 1),
    ("ReduceMean", dict(keepdims=0), (2, 3, 4), {"axes": _i64(0, 2)}, 1),
    ("Squeeze", {}, (2, 1, 4, 1), {"axes": _i64(1, -1)}, 1),
    ("Unsqueeze", {}, (2, 4), {"axes": _i64(0, -1)}, 1),
    ("Gather", dict(axis=1), (2, 5, 3), {"idx": _i64([0, -1], [2, 2])}, 1),
    (
        "Resize",
        dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        (2, 3, 4, 5),
        {"roi": "", "scales": _f32(1, 1, 2, 3)},
        1,
    ),
    (
        "Resize",
        dict(mode="linear", coordinate_transformation_mode="align_corners"),
        (2, 3, 4, 5),
        {"roi": "", "scales": "", "sizes": _i64(2, 3, 7, 9)},
        1,
    ),
    (
        "Resize",
        dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        (2, 3, 4, 5),
        {"roi": "", "scales": _f32(1, 1, 2, 2)},
        1,
    ),
    (
        "LayerNormalization",
        dict(axis=-2, epsilon=1e-3),
        (2, 3, 4, 5),
        {"scale": _RNG.standard_normal((4, 5)).astype(np.float32)},
        1,
    ),
]


def _single_op_model(op_type, attrs, shape, extra, n_out):
    inits, names = [], ["x"]
    for name, value in extra.items():
        if isinstance(value, str):
            names.append("")
            continue
        if op_type == "Gather":
            value = np.array(value, dtype=np.int64)
        inits.append(onnx.numpy_helper.from_array(value, name))
        names.append(name)
    outs = [f"y{i}" for i in range(n_out)]
    node = H.make_node(op_type, names, outs, **attrs)
    graph = H.make_graph(
        [node],
        "g",
        [H.make_tensor_value_info("x", FLOAT, list(shape))],
        [H.make_tensor_value_info(o, FLOAT, None) for o in outs],
        initializer=inits,
    )
    return H.make_model(graph, opset_imports=[H.make_opsetid("", 20)], ir_version=9)


@pytest.mark.parametrize("case", SINGLE_OPS, ids=[f"{c[0]}-{i}" for i, c in enumerate(SINGLE_OPS)])
def test_single_op_matches_onnxruntime(case):
    from onnxprune.torch.convert import OnnxModule

    model = _single_op_model(*case)
    x = np.random.default_rng(7).standard_normal(case[2]).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"x": x})
    with torch.no_grad():
        actual = OnnxModule(model)(torch.from_numpy(x))
    actual = actual if isinstance(actual, tuple) else (actual,)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-5, atol=1e-5)


def test_shape_ops_chain_matches_onnxruntime():
    """Shape -> Gather -> ConstantOfShape / Cast / Div (int) / Concat -> Reshape, like the
    TorchScript exporter's computed shapes."""
    from onnxprune.torch.convert import OnnxModule

    inits = [
        onnx.numpy_helper.from_array(_i64(1), "i1"),
        onnx.numpy_helper.from_array(_i64(2), "two"),
        onnx.numpy_helper.from_array(_i64(-1), "m1"),
    ]
    nodes = [
        H.make_node("Shape", ["x"], ["s"]),
        H.make_node("Gather", ["s", "i1"], ["c"], axis=0),  # [C]
        H.make_node("Div", ["c", "two"], ["half"]),  # integer division
        H.make_node("Concat", ["m1", "half"], ["shape"], axis=0),  # [-1, C // 2]
        H.make_node("Reshape", ["x", "shape"], ["r"]),
        H.make_node("Shape", ["r"], ["rs"]),
        H.make_node("ConstantOfShape", ["rs"], ["ones"], value=onnx.numpy_helper.from_array(np.array([1], np.int32))),
        H.make_node("Cast", ["ones"], ["onesf"], to=FLOAT),
        H.make_node("Add", ["r", "onesf"], ["y"]),
    ]
    graph = H.make_graph(
        nodes,
        "g",
        [H.make_tensor_value_info("x", FLOAT, [2, 6, 3])],
        [H.make_tensor_value_info("y", FLOAT, None)],
        initializer=inits,
    )
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(5).standard_normal((2, 6, 3)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        actual = OnnxModule(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, sess.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
