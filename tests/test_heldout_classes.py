"""Reproductions of failure classes seen on held-out third-party models (jax2tf/tf2onnx Keras
models, ONNX Runtime dynamic quantization, If-only models, Concat selection), each a tiny graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.api import load_and_analyze, require_prunable
from onnxprune.errors import InputError
from onnxprune.select.selection import SelectOptions, select

RNG = np.random.default_rng(7)


class Graph:
    """A minimal builder: nodes, float initializers, int constants."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, name=None) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape, scale=0.5) -> str:
        return self.const((RNG.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type, *inputs, outputs=1, **attrs):
        self.count += 1
        names = [f"t{self.count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=f"n{self.count}", **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs, output, opset=15) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], self.inits
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def verified(model, **options):
    result = onnxprune.prune(model, **{"ratio": 0.5, **options})
    assert result.report["verification"]["ok"]
    return result


def prunable(model) -> list:
    return [g for g in onnxprune.analyze(model) if g.prunable]


def keras_body(g: Graph, x: str, tokens: int = 16, fold: int = 4) -> str:
    """jax2tf-style Magika body: a Dense embedding on [N, T, 1] bytes' features, k tokens folded into
    one row (Reshape [N, T, C] -> [N, T/k, k*C] with a target computed as Cast(Concat(Shape…))),
    a norm over the token axis dividing by sqrt(max(0, var) + eps), a multi-axis Slice with
    "to the end" bounds, and a Conv over the folded rows."""
    h = g.op("Relu", g.op("Add", g.op("MatMul", x, g.weight(3, 8)), g.weight(1, 1, 8)))
    batch = g.op(
        "Slice",
        g.op("Cast", g.op("Shape", x), to=6),
        g.const(np.array([0], np.int32)),
        g.const(np.array([1], np.int32)),
        g.const(np.array([0], np.int32)),
    )
    target = g.op(
        "Cast",
        g.op(
            "Concat",
            batch,
            g.const(np.array([tokens // fold], np.int32)),
            g.const(np.array([fold * 8], np.int32)),
            axis=0,
        ),
        to=7,
    )
    folded = g.op("Reshape", h, target)  # [N, T/k, k*8]
    mean = g.op("ReduceMean", folded, axes=[1])
    centered = g.op("Sub", folded, mean)
    var = g.op("Max", g.const(np.float32(0)), g.op("ReduceMean", g.op("Mul", centered, centered), axes=[1]))
    std = g.op("Sqrt", g.op("Add", var, g.const(np.float32(1e-6))))
    normed = g.op("Mul", g.op("Mul", centered, g.op("Reciprocal", std)), g.weight(1, tokens // fold, 1))
    full = g.op(
        "Slice",
        g.op("Unsqueeze", normed, g.const(np.array([3]))),
        g.const(np.zeros(4, np.int64)),
        g.const(np.full(4, 2**31 - 1, np.int64)),
        g.const(np.array([0, 2, 1, 3])),
        g.const(np.ones(4, np.int64)),
    )
    conv = g.op("Conv", g.op("Transpose", full, perm=[0, 2, 1, 3]), g.weight(6, fold * 8, 3, 1), kernel_shape=[3, 1])
    return g.op("ReduceMax", conv, axes=[2, 3], keepdims=0)


def test_keras_folded_embedding_slice_and_token_norm_are_pruned():
    g = Graph()
    y = keras_body(g, "x")
    model = g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 3])], y)
    groups = prunable(model)
    assert [g.channels for g in groups] == [8]
    result = verified(model)
    weights = {w.name: w for w in result.model.graph.initializer}
    conv_weight = next(n.input[1] for n in result.model.graph.node if n.op_type == "Conv")
    assert list(weights[conv_weight].dims) == [6, 16, 3, 1]  # 4 folded copies of 4 kept features
    x = RNG.standard_normal((2, 16, 3)).astype(np.float32)
    import onnxruntime as ort

    out = ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x})[0]
    assert out.shape == (2, 6)


def test_slice_of_a_dynamic_axis_freezes_only_that_axis():
    g = Graph()
    conv = g.op("Conv", "x", g.weight(6, 3, 3, 3), pads=[1, 1, 1, 1])
    part = g.op("Slice", conv, g.const(np.array([0, 0])), g.const(np.array([1, 2**31 - 1])), g.const(np.array([2, 1])))
    y = g.op("Conv", g.op("Relu", part), g.weight(4, 6, 1, 1))
    model = g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", 5])], y)
    assert [g.channels for g in prunable(model)] == [6]
    assert verified(model).report["verification"]["ok"]


def test_one_hot_classes_are_frozen_as_input_features():
    g = Graph()
    onehot = g.op("Cast", g.op("Equal", "x", g.const(np.arange(5, dtype=np.int32).reshape(1, 1, 5))), to=1)
    y = g.op("MatMul", g.op("Relu", g.op("MatMul", onehot, g.weight(5, 6))), g.weight(6, 2))
    model = g.model([helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4, 1])], y)
    groups = onnxprune.analyze(model)
    assert [g.channels for g in groups if g.prunable] == [6]
    frozen = [g for g in groups if g.channels == 5]
    assert len(frozen) == 1 and "one-hot" in frozen[0].frozen
    assert verified(model).report["verification"]["ok"]


@pytest.mark.parametrize("divisor, ok", [("positive", True), ("tanh", False)])
def test_division_by_a_provably_positive_tensor(divisor, ok):
    g = Graph()
    t = g.op("Conv", "x", g.weight(6, 3, 3, 3), pads=[1, 1, 1, 1])
    d = (
        g.op("Sqrt", g.op("Add", g.op("Mul", t, t), g.const(np.float32(1e-3))))
        if divisor == "positive"
        else g.op("Tanh", t)
    )
    y = g.op("Conv", g.op("Div", t, d), g.weight(4, 6, 1, 1))
    model = g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])], y)
    assert bool(prunable(model)) is ok
    if ok:
        assert verified(model).report["verification"]["ok"]
    else:
        assert any("division by an activation" in g.frozen for g in onnxprune.analyze(model) if g.frozen)


def test_layers_inside_if_branches_say_so():
    inner = Graph()
    inner_y = inner.op("Conv", "x", inner.weight(4, 3, 3, 3))
    branch = helper.make_graph(
        inner.nodes, "b", [], [helper.make_tensor_value_info(inner_y, TensorProto.FLOAT, None)], inner.inits
    )
    g = Graph()
    y = g.op("If", "cond", then_branch=branch, else_branch=branch)
    model = g.model(
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
        ],
        y,
    )
    with pytest.raises(InputError, match=r"layers sit inside the subgraphs of If 'n\d+' \(layers inside If/Loop/Scan"):
        require_prunable(load_and_analyze(model))


def test_dynamic_quantization_convinteger_is_pruned_exactly(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    g = Graph()
    t = g.op("Relu", g.op("Conv", "x", g.weight(8, 3, 3, 3), g.weight(8), pads=[1, 1, 1, 1]))
    t = g.op("Relu", g.op("Conv", t, g.weight(8, 8, 3, 3), g.weight(8), pads=[1, 1, 1, 1]))
    y = g.op("Conv", t, g.weight(4, 8, 1, 1), g.weight(4))
    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], y, opset=13), src)
    quantize_dynamic(src, out, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    model = onnx.load(out)
    assert sum(n.op_type == "ConvInteger" for n in model.graph.node) == 3
    assert [g.channels for g in prunable(model)] == [8, 8]
    result = verified(model)
    assert result.report["verification"]["max_relative"] < 1e-6  # integer arithmetic: exact up to the float rescale
    kept = [list(w.dims) for w in result.model.graph.initializer if len(w.dims) == 4]
    assert sorted(kept) == sorted([[4, 3, 3, 3], [4, 4, 3, 3], [4, 4, 1, 1]])


def test_selection_keeps_a_channel_in_every_concat_piece():
    g = Graph()
    pieces = [
        g.op("Relu", g.op("Conv", "x", g.weight(24, 3, 3, 3, scale=0.01 if k == 0 else 1.0), pads=[1, 1, 1, 1]))
        for k in range(4)
    ]
    y = g.op("Conv", g.op("Concat", *pieces, axis=1), g.weight(8, 96, 1, 1))
    model = g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])], y)
    analysis = load_and_analyze(model)
    group = next(gr for gr in analysis.groups if gr.prunable)
    scores = {group.id: np.concatenate([np.zeros(24), np.ones(72)])}  # piece 0 scores lowest
    for scope, ratio in [("local", 0.5), ("local", 0.95), ("global", 0.5), ("global", 0.95)]:
        kept = select(analysis.groups, scores, SelectOptions(ratio=ratio, scope=scope)).kept[group.id]
        per_piece = [int(np.sum((kept >= 24 * k) & (kept < 24 * (k + 1)))) for k in range(4)]
        assert min(per_piece) >= 1, (scope, ratio, per_piece)
        if scope == "local":
            assert len(set(per_piece)) == 1  # every layer loses `ratio` of its own channels
    assert verified(model, ratio=0.9, scope="global").report["verification"]["ok"]


# ---- recurrent layers: a CRNN's convolutions feed an LSTM/GRU --------------------------------


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_convolutions_before_a_recurrent_layer_prune_its_input_columns(op, gates):
    """Conv [N,4,1,T] → [N,8,1,T] → Squeeze → Transpose → [T,N,8] → LSTM/GRU/RNN (hidden 6):
    the conv's 8 filters are a group with W's input columns; the hidden size stays."""
    g = Graph()
    conv = g.op("Relu", g.op("Conv", "x", g.weight(8, 4, 1, 3), g.weight(8), pads=[0, 1, 0, 1]))
    seq = g.op("Transpose", g.op("Squeeze", conv, g.const(np.array([2]))), perm=[2, 0, 1])
    w, r, b = g.weight(1, gates * 6, 8), g.weight(1, gates * 6, 6), g.weight(1, 2 * gates * 6)
    y = g.op(op, seq, w, r, b, hidden_size=6)
    model = g.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 1, 10])], y)
    result = onnxprune.prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert result.plan["weights"][w]["kept"] == {"2": result.plan["weights"][model.graph.node[0].input[1]]["kept"]["0"]}
    kept = {i.name: list(i.dims) for i in result.model.graph.initializer}
    assert kept[w] == [1, gates * 6, 4] and kept[r] == [1, gates * 6, 6]
    groups = {row["channels"]: (row["kept"], row["frozen"]) for row in result.report["groups"]}
    assert groups[8] == (4, None) and "graph input 'x'" in groups[4][1]
