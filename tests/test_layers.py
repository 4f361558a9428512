"""Layers as the op rules describe them (`WeightLayout`, `macs`): MACs against hand-computed
values, integer and recurrent layers, and the weight a layer's MACs scale with."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis.cost import model_macs, node_macs, unscaled_macs
from onnxprune.analysis.layers import is_layer, layer_layout, layer_weight, weight_axes
from onnxprune.model.nodes import node_label
from onnxprune.model.view import ModelView

RNG = np.random.default_rng(3)


def _model(
    node: onnx.NodeProto, inputs: dict[str, list], weights: dict[str, tuple], opset: int = 17
) -> onnx.ModelProto:
    """One node; `inputs` are graph inputs (name -> shape), `weights` random float initializers."""
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in weights.items()]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _macs(node, inputs, weights) -> int:
    return node_macs(node, ModelView(_model(node, inputs, weights)))


def test_grouped_strided_conv_macs():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    # y [1, 16, 5, 5]; each output element reads C_in / group · k² = 4 · 9 inputs
    assert _macs(node, {"x": [1, 8, 10, 10]}, {"w": (16, 4, 3, 3)}) == 16 * 5 * 5 * 4 * 9


def test_conv_transpose_macs():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    # each of the 4 · 5 · 5 input elements is scattered into 6 · 3 · 3 outputs (y [1, 6, 11, 11])
    assert _macs(node, {"x": [1, 4, 5, 5]}, {"w": (4, 6, 3, 3)}) == 4 * 5 * 5 * 6 * 9


def test_gemm_macs_with_trans_a_and_trans_b():
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)
    assert _macs(node, {"a": [5, 3]}, {"b": (5, 7)}) == 3 * 7 * 5  # Y [3, 7], K = 5
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    assert _macs(node, {"a": [2, 5]}, {"b": (7, 5)}) == 2 * 7 * 5


def test_batched_matmul_macs():
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    assert _macs(node, {"a": [2, 4, 6, 5]}, {"b": (5, 3)}) == 2 * 4 * 6 * 3 * 5
    assert _macs(node, {"a": [2, 4, 6, 5], "b": [2, 4, 5, 7]}, {}) == 2 * 4 * 6 * 7 * 5  # two activations


def test_ops_without_a_layout_and_custom_domains_count_zero():
    relu = helper.make_node("Relu", ["x"], ["y"])
    assert _macs(relu, {"x": [1, 4, 5, 5]}, {}) == 0 and not is_layer(relu)
    custom = helper.make_node("Conv", ["x", "w"], ["y"], domain="com.example")
    assert not is_layer(custom) and layer_layout(custom) is None


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_macs_count_the_input_and_the_recurrent_product(op, gates):
    node = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=6, direction="bidirectional")
    view = ModelView(_model(node, {"x": [10, 2, 8]}, {"w": (2, gates * 6, 8), "r": (2, gates * 6, 6)}))
    steps = 10 * 2  # sequence × batch
    assert node_macs(node, view) == steps * (2 * gates * 6 * 8 + 2 * gates * 6 * 6)
    assert unscaled_macs(node, view) == steps * 2 * gates * 6 * 6  # R: the hidden size is not pruned
    assert layer_weight(node, view) == "w" and weight_axes(node, view) == (2, 1)


def test_layer_weight_and_axes():
    gemm = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    view = ModelView(_model(gemm, {"a": [2, 5]}, {"b": (7, 5)}))
    assert layer_weight(gemm, view) == "b" and weight_axes(gemm, view) == (1, 0)
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    view = ModelView(_model(matmul, {"a": [2, 6, 5], "b": [2, 5, 7]}, {}))
    assert is_layer(matmul) and layer_weight(matmul, view) is None  # attention: no weight
    view = ModelView(_model(matmul, {"a": [2, 6, 5]}, {"b": (2, 5, 7)}))
    assert layer_weight(matmul, view) is None  # a 3-D constant: not the 2-D layout
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    view = ModelView(_model(conv, {"x": [1, 4, 5, 5]}, {"w": (6, 4, 3, 3)}))
    assert layer_weight(conv, view) == "w" and weight_axes(conv, view) == (1, 0)
    assert layer_layout(conv).timed and layer_layout(conv).refit and layer_layout(conv).grouped


def _quantized(model: onnx.ModelProto, op: str, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    quantize_dynamic(src, out, weight_type=QuantType.QUInt8, op_types_to_quantize=[op])
    return onnx.load(out)


def test_convinteger_macs_equal_the_float_convs(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["t", "w2"], ["y"], group=2, strides=[2, 2]),
    ]
    inits = [
        numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
        for n, s in {"w1": (8, 3, 3, 3), "w2": (8, 4, 3, 3)}.items()
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    quantized = onnx.shape_inference.infer_shapes(_quantized(model, "Conv", tmp_path))
    integer = [n for n in quantized.graph.node if n.op_type == "ConvInteger"]
    float_macs = [node_macs(n, ModelView(model)) for n in model.graph.node]
    assert len(integer) == 2 and float_macs == [8 * 9 * 9 * 3 * 9, 8 * 4 * 4 * 4 * 9]
    assert [node_macs(n, ModelView(quantized)) for n in integer] == float_macs
    assert sum(model_macs(ModelView(quantized)).values()) == sum(float_macs)


def test_matmulinteger_macs_equal_the_float_matmul(tmp_path):
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model(node, {"a": [3, 4, 16]}, {"b": (16, 8)}, opset=13)
    quantized = onnx.shape_inference.infer_shapes(_quantized(model, "MatMul", tmp_path))
    (integer,) = [n for n in quantized.graph.node if n.op_type == "MatMulInteger"]
    assert node_macs(integer, ModelView(quantized)) == node_macs(node, ModelView(model)) == 3 * 4 * 8 * 16


def test_pruned_macs_are_the_unscaled_part_plus_the_rest_times_the_weight_share():
    """What `PlanCost` relies on: a layer's pruned MACs = unscaled + (MACs - unscaled) × the kept
    share of `layer_weight` — for an LSTM whose input columns are pruned, and for the Conv."""
    inits = {"wc": (8, 4, 1, 3), "w": (1, 24, 8), "r": (1, 24, 6)}
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[0, 1, 0, 1]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("Squeeze", ["cr", "axes"], ["s"]),
        helper.make_node("Transpose", ["s"], ["seq"], perm=[2, 0, 1]),
        helper.make_node("LSTM", ["seq", "w", "r"], ["y"], hidden_size=6),
    ]
    tensors = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in inits.items()]
    tensors.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    graph = helper.make_graph(
        nodes,
        "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        tensors,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]))
    result = onnxprune.prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    before, after = ModelView(model), ModelView(onnx.shape_inference.infer_shapes(result.model))
    sizes = {i.name: int(np.prod(i.dims)) for i in result.model.graph.initializer}
    for node in model.graph.node:
        weight = layer_weight(node, before)
        if weight is None:
            continue
        share = sizes[weight] / before.value(weight).size
        pruned = next(n for n in result.model.graph.node if node_label(n) == node_label(node))
        fixed = unscaled_macs(node, before)
        assert share == 0.5 and node_macs(pruned, after) == fixed + (node_macs(node, before) - fixed) * share
