"""Stored precision is kept (int8 weight chains, QDQ models, fp16) and the plan names only tensors
of the input (issue 13, classes 5 and 6). Every model is built here; sizes are asserted in bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from plan_checks import independent_plan_check, input_tensors

from onnxprune import prune
from onnxprune.model.runtime import run_model

RNG = np.random.default_rng(0)


def nbytes(model: onnx.ModelProto) -> int:
    return len(model.SerializeToString())


def nbytes_without_shapes(model: onnx.ModelProto) -> int:
    """Serialized size without the inferred intermediate shapes (value_info) the output gains."""
    return nbytes(model) - sum(len(v.SerializeToString()) + 3 for v in model.graph.value_info)


# ---- models ----------------------------------------------------------------------------------


def _int8_weight(prefix: str, shape: tuple, nodes: list, inits: list) -> str:
    """int8 values → Cast(float) → Mul by a per-channel scale [C, 1, 1, 1]."""
    q = RNG.integers(-127, 128, size=shape).astype(np.int8)
    scale = (RNG.random((shape[0],) + (1,) * (len(shape) - 1)) * 0.01 + 0.001).astype(np.float32)
    inits += [nh.from_array(q, f"{prefix}_q"), nh.from_array(scale, f"{prefix}_scale")]
    nodes += [
        h.make_node("Cast", [f"{prefix}_q"], [f"{prefix}_f"], to=T.FLOAT),
        h.make_node("Mul", [f"{prefix}_f", f"{prefix}_scale"], [f"{prefix}_w"]),
    ]
    return f"{prefix}_w"


def _cnn(weight, widths=(3, 32, 64, 32), dtype=T.FLOAT, size=12) -> onnx.ModelProto:
    """Conv(+bias) → Relu stacks; `weight(prefix, shape, nodes, inits)` makes each conv weight."""
    nodes, inits, x = [], [], "x"
    for k, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        w = weight(f"c{k}", (c_out, c_in, 3, 3), nodes, inits)
        bias = RNG.standard_normal(c_out).astype(np.float32 if dtype == T.FLOAT else np.float16)
        inits.append(nh.from_array(bias, f"b{k}"))
        nodes += [
            h.make_node("Conv", [x, w, f"b{k}"], [f"y{k}"], pads=[1, 1, 1, 1]),
            h.make_node("Relu", [f"y{k}"], [f"r{k}"]),
        ]
        x = f"r{k}"
    nodes[-1].output[0] = "out"
    graph = h.make_graph(
        nodes,
        "cnn",
        [h.make_tensor_value_info("x", dtype, [1, widths[0], size, size])],
        [h.make_tensor_value_info("out", dtype, [1, widths[-1], size, size])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def int8_chain_cnn() -> onnx.ModelProto:
    return _cnn(_int8_weight)


def _fp16_weight(prefix, shape, nodes, inits):
    inits.append(nh.from_array(RNG.standard_normal(shape).astype(np.float16), f"{prefix}_h"))
    nodes.append(h.make_node("Cast", [f"{prefix}_h"], [f"{prefix}_w"], to=T.FLOAT))
    return f"{prefix}_w"


def _float_weight(prefix, shape, nodes, inits, dtype=np.float32):
    inits.append(nh.from_array((RNG.standard_normal(shape) * 0.2).astype(dtype), f"{prefix}_w"))
    return f"{prefix}_w"


def _plain(result, source: onnx.ModelProto) -> dict:
    """Sizes and the independent check of a prune result."""
    return {
        "checked": independent_plan_check(source, result.model, result.plan),
        "input": nbytes(source),
        "output": nbytes(result.model),
        "output_without_shapes": nbytes_without_shapes(result.model),
    }


# ---- int8 weight chains --------------------------------------------------------------------


def test_int8_chain_kept_in_int8_at_ratio_zero_and_half():
    model = int8_chain_cnn()
    zero = _plain(prune(model, ratio=0.0), model)
    assert zero["output_without_shapes"] <= zero["input"]  # was 4.49 MB for 1.27 MB in the issue
    result = prune(model, ratio=0.5)
    half = _plain(result, model)
    assert result.report["verification"]["ok"]
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert stored["c1_q"] == stored["c2_q"] == T.INT8
    assert not any(name.endswith("_w") for name in stored)  # no folded float weight left
    assert half["output"] < 0.45 * half["input"]
    assert set(result.plan["weights"]) >= {"c0_q", "c0_scale", "c1_q", "c1_scale", "c2_q"}
    assert "derived" not in result.plan
    kept = result.plan["weights"]["c1_q"]["kept"]
    assert len(kept["0"]) == 32 and len(kept["1"]) == 16
    assert result.plan["weights"]["c1_scale"]["kept"] == {"0": kept["0"]}  # broadcast axes not sliced
    assert half["checked"] == 7  # c0_q, c0_scale, b0, c1_q, c1_scale, b1, c2_q (input axis; its output is frozen)
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    assert run_model(result.model, {"x": x})["out"].shape == (1, 32, 12, 12)


def shared_scale_model() -> onnx.ModelProto:
    """Two int8 chains that read one scale tensor."""
    nodes, inits = [], []
    q1 = RNG.integers(-127, 128, size=(16, 3, 3, 3)).astype(np.int8)
    q2 = RNG.integers(-127, 128, size=(16, 16, 3, 3)).astype(np.int8)
    inits += [
        nh.from_array(q1, "q1"),
        nh.from_array(q2, "q2"),
        nh.from_array(np.full((16, 1, 1, 1), 0.01, np.float32), "shared_scale"),
    ]
    nodes += [
        h.make_node("Cast", ["q1"], ["f1"], to=T.FLOAT),
        h.make_node("Mul", ["f1", "shared_scale"], ["w1"]),
        h.make_node("Cast", ["q2"], ["f2"], to=T.FLOAT),
        h.make_node("Mul", ["f2", "shared_scale"], ["w2"]),
        h.make_node("Conv", ["x", "w1"], ["y1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["y1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2"], ["y2"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["y2"], ["r2"]),
        h.make_node("ReduceMean", ["r2"], ["out"], axes=[2, 3], keepdims=0),
    ]
    graph = h.make_graph(
        nodes,
        "shared",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("out", T.FLOAT, [1, 16])],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_chain_shared_scale_sliced_two_ways_gets_its_own_copy():
    """One scale tensor read by two chains whose kept channels differ: both chains are put back
    (int8); the second reads its own sliced copy of the scale, listed under `derived` with
    `slice_of`; `weights` names only input tensors and the output is smaller than the input."""
    model = shared_scale_model()
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert stored == {"q1": T.INT8, "shared_scale": T.FLOAT, "q2": T.INT8, "shared_scale__w2": T.FLOAT}
    assert independent_plan_check(model, result.model, result.plan) == 3  # q1, shared_scale, q2
    derived = result.plan["derived"]
    assert list(derived) == ["shared_scale__w2"] and derived["shared_scale__w2"]["slice_of"] == "shared_scale"
    assert derived["shared_scale__w2"]["from"] == ["shared_scale"]
    assert derived["shared_scale__w2"]["kept"] == {}  # w2's output channels are frozen: a full copy
    assert nbytes_without_shapes(result.model) < nbytes(model)


# ---- QDQ from onnxruntime.quantization ------------------------------------------------------


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory) -> onnx.ModelProto:
    return build_qdq(tmp_path_factory.mktemp("qdq"))


def build_qdq(folder) -> onnx.ModelProto:
    """A small float CNN quantized by ONNX Runtime (QDQ, per-channel int8 weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    float_model = _cnn(_float_weight, widths=(3, 32, 64, 32), size=12)
    onnx.save(float_model, folder / "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(folder / "float.onnx"),
        str(folder / "qdq.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return onnx.load(folder / "qdq.onnx")


def test_qdq_model_pruned_in_stored_format(qdq_model):
    ops = [n.op_type for n in qdq_model.graph.node]
    assert ops.count("DequantizeLinear") >= 9 and ops.count("QuantizeLinear") >= 3
    result = prune(qdq_model, ratio=0.5)
    sizes = _plain(result, qdq_model)
    assert result.report["verification"]["ok"]
    assert sizes["output"] < 0.6 * sizes["input"]
    weights = result.plan["weights"]
    stored = {i.name: i for i in result.model.graph.initializer}
    assert [stored[f"c{k}_w_quantized"].data_type for k in range(3)] == [T.INT8] * 3
    assert [list(stored[f"c{k}_w_quantized"].dims) for k in range(3)] == [[16, 3, 3, 3], [32, 16, 3, 3], [32, 32, 3, 3]]
    assert stored["b1_quantized"].data_type == T.INT32 and list(stored["b1_quantized"].dims) == [32]
    kept = weights["c1_w_quantized"]["kept"]["0"]
    for per_channel in ("c1_w_scale", "c1_w_zero_point", "b1_quantized", "b1_quantized_scale"):
        assert weights[per_channel]["kept"] == {"0": kept}  # sliced along the pruned axis
    assert "derived" not in result.plan
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    assert run_model(result.model, {"x": x}, optimize=True)["out"].shape == (1, 32, 12, 12)


# ---- fp16 ------------------------------------------------------------------------------------


def test_fp16_stored_weights_cast_to_float_stay_fp16():
    model = _cnn(_fp16_weight)
    result = prune(model, ratio=0.5)
    sizes = _plain(result, model)
    assert result.report["verification"]["ok"]
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert stored["c0_h"] == stored["c1_h"] == stored["c2_h"] == T.FLOAT16
    assert sizes["output"] < 0.5 * sizes["input"]
    zero = prune(model, ratio=0.0)
    assert nbytes_without_shapes(zero.model) <= nbytes(model)


def test_whole_fp16_graph_keeps_fp16():
    model = _cnn(lambda *a: _float_weight(*a, dtype=np.float16), dtype=T.FLOAT16, widths=(3, 16, 32, 16))
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    sizes = _plain(result, model)
    assert {i.data_type for i in result.model.graph.initializer} == {T.FLOAT16}
    assert sizes["output"] < 0.5 * sizes["input"]
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float16)
    assert run_model(result.model, {"x": x})["out"].dtype == np.float16


# ---- folded tensors: the plan names input tensors only ----------------------------------------


def _bias_after_conv(bias_op: str) -> onnx.ModelProto:
    """Conv without bias → Add of a bias [C] unsqueezed/reshaped to [1, C, 1, 1] (third-party
    exports of torch models do this)."""
    nodes, inits, x = [], [], "x"
    widths = (3, 16, 32, 8)
    for k, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        inits += [
            nh.from_array((RNG.standard_normal((c_out, c_in, 3, 3)) * 0.2).astype(np.float32), f"w{k}"),
            nh.from_array(RNG.standard_normal(c_out).astype(np.float32), f"bias{k}"),
        ]
        if bias_op == "Unsqueeze":
            inits.append(nh.from_array(np.array([0, 2, 3], np.int64), f"axes{k}"))
            nodes.append(h.make_node("Unsqueeze", [f"bias{k}", f"axes{k}"], [f"b4_{k}"]))
        else:
            inits.append(nh.from_array(np.array([1, -1, 1, 1], np.int64), f"shape{k}"))
            nodes.append(h.make_node("Reshape", [f"bias{k}", f"shape{k}"], [f"b4_{k}"]))
        nodes += [
            h.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
            h.make_node("Add", [f"c{k}", f"b4_{k}"], [f"y{k}"]),
            h.make_node("Relu", [f"y{k}"], [f"r{k}"]),
        ]
        x = f"r{k}"
    nodes[-1].output[0] = "out"
    graph = h.make_graph(
        nodes,
        "bias",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("out", T.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("bias_op", ["Unsqueeze", "Reshape"])
def test_folded_bias_plan_names_input_tensors(bias_op):
    model = _bias_after_conv(bias_op)
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert independent_plan_check(model, result.model, result.plan) == 5  # w0, bias0, w1, bias1, w2 (input axis)
    assert "derived" not in result.plan
    assert result.plan["weights"]["bias1"]["kept"]["0"] == result.plan["weights"]["w1"]["kept"]["0"]
    assert nbytes_without_shapes(result.model) < nbytes(model)


def test_channel_padding_shortcut_with_computed_pads():
    """tf2onnx writes tf.pad's paddings [rank, 2] through Transpose → Reshape(-1) → Cast; the
    shortcut pads the channel axis so the block's input adds to its wider output."""
    inits = [
        nh.from_array((RNG.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w0"),
        nh.from_array((RNG.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w1"),
        nh.from_array((RNG.standard_normal((8, 16, 1, 1)) * 0.2).astype(np.float32), "w2"),
        nh.from_array(np.array([[0, 0], [4, 4], [0, 0], [0, 0]], np.int32), "paddings"),
        nh.from_array(np.array([-1], np.int64), "flat"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["ra"]),
        h.make_node("Conv", ["ra", "w1"], ["b"], pads=[1, 1, 1, 1]),
        h.make_node("Transpose", ["paddings"], ["pt"], perm=[1, 0]),
        h.make_node("Reshape", ["pt", "flat"], ["pf"]),
        h.make_node("Cast", ["pf"], ["pads"], to=T.INT64),
        h.make_node("Pad", ["ra", "pads"], ["shortcut"]),
        h.make_node("Add", ["b", "shortcut"], ["s"]),
        h.make_node("Relu", ["s"], ["rs"]),
        h.make_node("Conv", ["rs", "w2"], ["out"]),
    ]
    graph = h.make_graph(
        nodes,
        "pad_shortcut",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("out", T.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert independent_plan_check(model, result.model, result.plan) >= 3
    assert set(result.plan["weights"]) <= {"w0", "w1", "w2"}
    groups = [g for g in result.plan["groups"] if g["frozen"] is None]
    assert any(len(g["kept"]) < g["channels"] for g in groups)


# ---- the stored model re-checked by `onnxprune check` -------------------------------------------


@pytest.mark.parametrize("build", ["int8", "qdq", "bias"])
def test_check_command_accepts_stored_precision_outputs(build, tmp_path, qdq_model):
    model = {"int8": int8_chain_cnn, "qdq": lambda: qdq_model, "bias": lambda: _bias_after_conv("Unsqueeze")}[build]()
    from onnxprune.verify.check import check_pruned

    onnx.save(model, tmp_path / "in.onnx")
    result = prune(str(tmp_path / "in.onnx"), ratio=0.5)
    result.save(tmp_path / "out.onnx")
    checked = check_pruned(tmp_path / "out.onnx", tmp_path / "in.onnx", tmp_path / "out.plan.json", runs=1)
    assert checked.bad_weights == [] and checked.ok
    assert checked.max_relative < 1e-5
    assert (tmp_path / "out.onnx").stat().st_size < (tmp_path / "in.onnx").stat().st_size


def test_reconstruction_skips_chain_weights_without_crashing(tmp_path):
    """--reconstruct refits float initializers only: a pruned int8 chain stays int8 and exact."""
    model = int8_chain_cnn()
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 3, 12, 12)).astype(np.float32))
    result = prune(model, ratio=0.5, calib=str(tmp_path / "calib.npz"), reconstruct=True, batch_size=1)
    assert result.report["reconstruction"]["layers"] == 0
    assert independent_plan_check(model, result.model, result.plan) == 7
    assert {i.data_type for i in result.model.graph.initializer if i.name.endswith("_q")} == {T.INT8}


def test_per_channel_activation_qdq_is_sliced_along_channels():
    """QuantizeLinear → DequantizeLinear on an activation, per channel (axis 1): its scale and
    zero point are sliced with the channels they quantize."""
    c = 16
    inits = [
        nh.from_array((RNG.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
        nh.from_array((RNG.standard_normal((8, c, 3, 3)) * 0.3).astype(np.float32), "w1"),
        nh.from_array((RNG.random(c) * 0.05 + 0.01).astype(np.float32), "act_scale"),
        nh.from_array(RNG.integers(100, 150, size=c).astype(np.uint8), "act_zp"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("QuantizeLinear", ["a", "act_scale", "act_zp"], ["aq"], axis=1),
        h.make_node("DequantizeLinear", ["aq", "act_scale", "act_zp"], ["ad"], axis=1),
        h.make_node("Relu", ["ad"], ["r"]),
        h.make_node("Conv", ["r", "w1"], ["out"], pads=[1, 1, 1, 1]),
    ]
    graph = h.make_graph(
        nodes,
        "act_qdq",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("out", T.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    weights = result.plan["weights"]
    assert weights["act_scale"]["kept"] == weights["act_zp"]["kept"] == {"0": weights["w0"]["kept"]["0"]}
    assert len(weights["w0"]["kept"]["0"]) == 8
    assert independent_plan_check(model, result.model, result.plan) == 4
    stored = {i.name: i for i in result.model.graph.initializer}
    assert stored["act_zp"].data_type == T.UINT8 and list(stored["act_zp"].dims) == [8]


def test_concat_with_computed_zero_channels_is_recorded_as_derived():
    """A shortcut widened by concatenating computed zero channels (ConstantOfShape of a stored
    shape): the folded zeros are sliced with the channels; they are not a tensor of the input,
    so the plan lists them under `derived` with what they were computed from."""
    inits = [
        nh.from_array((RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
        nh.from_array((RNG.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32), "w1"),
        nh.from_array((RNG.standard_normal((4, 16, 1, 1)) * 0.3).astype(np.float32), "w2"),
        nh.from_array(np.array([1, 8, 8, 8], np.int64), "zeros_shape"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["ra"]),
        h.make_node("ConstantOfShape", ["zeros_shape"], ["zeros"]),
        h.make_node("Concat", ["ra", "zeros"], ["wide"], axis=1),
        h.make_node("Conv", ["ra", "w1"], ["b"], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["b", "wide"], ["s"]),
        h.make_node("Relu", ["s"], ["rs"]),
        h.make_node("Conv", ["rs", "w2"], ["out"]),
    ]
    graph = h.make_graph(
        nodes,
        "zeros_shortcut",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [h.make_tensor_value_info("out", T.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert independent_plan_check(model, result.model, result.plan) >= 2
    assert set(result.plan["weights"]) == {"w0", "w1", "w2"}
    derived = result.plan["derived"]
    assert list(derived) == ["zeros"] and derived["zeros"]["shape"] == [1, 8, 8, 8]
    assert derived["zeros"]["from"] == ["zeros_shape"] and derived["zeros"]["nodes"] == ["ConstantOfShape:zeros"]
    held = input_tensors(result.model)["zeros"]
    assert held.shape == (1, len(derived["zeros"]["kept"]["1"]), 8, 8) and not held.any()


def test_param_count_counts_a_chain_once_at_its_weight():
    """ModelView.param_count of a model with int8 chains: each chain counts as the weight it
    yields (the input's folded float count), before and after pruning."""
    from onnxprune.analysis import ModelView
    from onnxprune.api import load_and_analyze

    model = int8_chain_cnn()
    folded = load_and_analyze(model).view.param_count()
    assert ModelView(model).param_count() == folded == 32 * 27 + 64 * 32 * 9 + 32 * 64 * 9 + 32 + 64 + 32
    pruned = prune(model, ratio=0.5).model
    assert ModelView(pruned).param_count() == 16 * 27 + 32 * 16 * 9 + 32 * 32 * 9 + 16 + 32 + 32
