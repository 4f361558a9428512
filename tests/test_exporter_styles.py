"""Graphs in the shapes other exporters emit (written by hand: tensorflow and paddle do not install
here), weights behind Identity nodes, and the opsets whose attribute-vs-input changes matter."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import GraphBuilder
from onnx import TensorProto, helper
from test_rules import prunable_rows, pruned

import onnxprune


def test_tf2onnx_style_nhwc_with_transposes_and_matmul_dense():
    g = GraphBuilder(shape=("N", 8, 8, 3), opset=13)
    nchw = g.op("Transpose", "x", perm=[0, 3, 1, 2])
    t = g.op("Relu", g.conv(nchw, 3, 8))
    nhwc = g.op("Transpose", t, perm=[0, 2, 3, 1])
    pooled = g.op("ReduceMean", nhwc, axes=[1, 2], keepdims=0)
    hidden = g.op("Relu", g.op("Add", g.op("MatMul", pooled, g.weight(8, 16)), g.weight(16)))
    y = g.op("Add", g.op("MatMul", hidden, g.weight(16, 4)), g.weight(4))
    result = pruned(g.model(y))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(8, 4), (16, 8)]


def test_paddle_style_bias_add_reshape_flatten_and_identity_weights():
    g = GraphBuilder(opset=11)
    weight = g.weight(6, 4, 3, 3)
    g.nodes.append(helper.make_node("Identity", [weight], ["conv_w_id"], name="weight_identity"))
    conv = g.op("Conv", "x", "conv_w_id", pads=[1, 1, 1, 1])
    biased = g.op("Add", conv, g.const(np.random.default_rng(0).standard_normal((1, 6, 1, 1)).astype(np.float32), "b"))
    t = g.op("Relu", g.bn(biased, 6))
    flat = g.op(
        "Reshape",
        g.op("MaxPool", t, kernel_shape=[4, 4], strides=[4, 4]),
        g.const(np.array([0, -1], np.int64), "shape"),
    )
    y = g.op("Add", g.op("MatMul", flat, g.weight(24, 3)), g.weight(3))
    result = pruned(g.model(y))
    assert [(r["channels"], r["kept"]) for r in prunable_rows(result)] == [(6, 3)]
    matmul = [e for e in result.plan["weights"].values() if e["shape"] == [24, 3]][0]
    assert len(matmul["kept"]["0"]) == 12


@pytest.mark.parametrize("opset", [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
def test_opsets_11_to_21(opset):
    g = GraphBuilder(opset=opset)
    t = g.op("Relu", g.conv("x", 4, 8))
    if opset < 13:
        a = g.op("Split", t, outputs=2, axis=1, split=[4, 4])
    else:
        a = g.op("Split", t, g.const(np.array([4, 4], np.int64), "s"), outputs=2, axis=1)
    b = g.nodes[-1].output[1]
    padded = g.op("Pad", b, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p"))
    merged = g.op("Concat", g.conv(a, 4, 4), g.conv(padded, 4, 4, pads=[0, 0, 0, 0]), axis=1)
    if opset < 18:
        pooled = g.op("ReduceMean", merged, axes=[2, 3], keepdims=1)
    else:
        pooled = g.op("ReduceMean", merged, g.const(np.array([2, 3], np.int64), "a"), keepdims=1)
    y = g.op("Flatten", g.conv(pooled, 8, 3, k=1), axis=1)
    result = pruned(g.model(y))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(8, 4), (8, 4)]


def test_int8_weights_freeze_with_a_reason_instead_of_crashing():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 6))
    w = g.const(np.ones((3, 6, 1, 1), np.int8), "q")
    wf = g.op("Cast", w, to=TensorProto.FLOAT)
    y = g.op("GlobalAveragePool", g.op("Conv", t, wf))
    result = onnxprune.prune(g.model(y), ratio=0.5)
    assert result.report["verification"]["ok"]
