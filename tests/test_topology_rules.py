"""Rules for Split/Slice/Concat on channels, grouped and transposed convolutions, Resize,
normalizations, Softmax, PRelu and Einsum, on tiny hand-written graphs across opsets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain
from test_rules import frozen_reasons, prunable_rows, pruned

import onnxprune


def ints(value):
    return np.array(value, dtype=np.int64)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_on_channels_prunes_each_part(opset):
    g = GraphBuilder(opset=opset)
    t = g.op("Relu", g.conv("x", 4, 8))
    if opset < 13:
        a = g.op("Split", t, outputs=2, axis=1, split=[3, 5])
    else:
        a = g.op("Split", t, g.const(ints([3, 5]), "s"), outputs=2, axis=1)
    b = g.nodes[-1].output[1]
    y = g.op("Add", g.op("GlobalAveragePool", g.conv(a, 3, 2)), g.op("GlobalAveragePool", g.conv(b, 5, 2)))
    result = pruned(g.model(y))
    (row,) = prunable_rows(result)
    assert (row["channels"], row["kept"]) == (8, 5)  # each part keeps its half: 3 -> 2, 5 -> 3
    sizes = [i for i in result.model.graph.initializer if i.name.startswith("s")]
    split = [n for n in result.model.graph.node if n.op_type == "Split"][0]
    if opset < 13:
        assert [list(a.ints) for a in split.attribute if a.name == "split"] == [[2, 3]]
    else:
        assert list(onnx.numpy_helper.to_array(sizes[0])) == [2, 3]


def test_split_with_num_outputs_gets_explicit_sizes():
    g = GraphBuilder(opset=18)
    t = g.op("Relu", g.conv("x", 4, 8))
    a = g.op("Split", t, outputs=2, axis=1, num_outputs=2)
    b = g.nodes[-1].output[1]
    y = g.op("Concat", g.conv(a, 4, 2), g.conv(b, 4, 2), axis=1)
    result = pruned(g.model(g.op("GlobalAveragePool", y)), ratio=0.7)
    split = [n for n in result.model.graph.node if n.op_type == "Split"][0]
    assert len(split.input) == 2 and not [a for a in split.attribute if a.name == "num_outputs"]


def test_concat_of_branches_prunes_each_input_partially():
    g = GraphBuilder()
    a = g.op("Relu", g.conv("x", 4, 6))
    b = g.op("Relu", g.conv("x", 4, 10))
    cat = g.op("Concat", a, b, axis=1)
    y = g.op("GlobalAveragePool", g.conv(cat, 16, 3))
    result = pruned(g.model(y))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(16, 8)]


def test_slice_of_a_channel_range_is_rewritten():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 10))
    part = g.op("Slice", t, g.const(ints([2]), "i"), g.const(ints([7]), "i"), g.const(ints([1]), "i"))
    rest = g.op("Slice", t, g.const(ints([7]), "i"), g.const(ints([2**62]), "i"), g.const(ints([1]), "i"))
    y = g.op("Add", g.op("GlobalAveragePool", g.conv(part, 5, 2)), g.op("GlobalAveragePool", g.conv(rest, 3, 2)))
    result = pruned(g.model(y), ratio=0.4)
    assert prunable_rows(result)[0]["kept"] == 6


def test_strided_channel_slice_freezes():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 8))
    part = g.op(
        "Slice", t, g.const(ints([0]), "i"), g.const(ints([8]), "i"), g.const(ints([1]), "i"), g.const(ints([2]), "i")
    )
    y = g.op("GlobalAveragePool", g.conv(part, 4, 2))
    assert any("not mapped through Slice" in r for r in frozen_reasons(g.model(y)))


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_conv_prunes_whole_groups(group):
    model = conv_chain(lambda g, t: g.op("Relu", g.conv(t, 8, 8, group=group)), c=8)
    (name,) = [n.name for n in model.graph.node if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    result = pruned(model)
    weights = {i.name: list(i.dims) for i in result.model.graph.initializer}
    (grouped,) = [n for n in result.model.graph.node if n.name == name]
    assert weights[grouped.input[1]] == [4, 8 // group, 3, 3]
    assert [a.i for a in grouped.attribute if a.name == "group"] == [group // 2]


def test_conv_transpose_prunes_both_sides():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 8))
    up = g.op("ConvTranspose", t, g.weight(8, 6, 2, 2), g.weight(6), strides=[2, 2])
    y = g.op("GlobalAveragePool", g.conv(g.op("Relu", up), 6, 3))
    result = pruned(g.model(y))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(6, 3), (8, 4)]


@pytest.mark.parametrize("mode", ["scales", "sizes"])
def test_resize_passes_channels(mode):
    g = GraphBuilder(shape=(2, 4, 8, 8))
    t = g.op("Relu", g.conv("x", 4, 6))
    if mode == "scales":
        up = g.op("Resize", t, "", g.const(np.array([1, 1, 2, 2], np.float32), "r"), mode="nearest")
    else:
        up = g.op("Resize", t, "", "", g.const(ints([2, 6, 16, 16]), "r"), mode="linear")
    y = g.op("GlobalAveragePool", g.conv(up, 6, 3))
    result = pruned(g.model(y))
    assert prunable_rows(result)[0]["kept"] == 3


def test_layer_norm_over_channels_freezes_them():
    g = GraphBuilder(opset=17)
    t = g.op("Transpose", g.conv("x", 4, 6), perm=[0, 2, 3, 1])
    ln = g.op("LayerNormalization", t, g.weight(6), g.weight(6), axis=-1)
    h = g.op("MatMul", ln, g.weight(6, 12))
    y = g.op("MatMul", g.op("Relu", h), g.weight(12, 6))
    out = g.op("GlobalAveragePool", g.conv(g.op("Transpose", y, perm=[0, 3, 1, 2]), 6, 2))
    result = pruned(g.model(out))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(6, 3), (12, 6)]
    assert any("normalized together by LayerNormalization" in r for r in frozen_reasons(g.model(out)))


def test_instance_norm_and_prelu_are_per_channel():
    def middle(g, t):
        norm = g.op("InstanceNormalization", t, g.weight(6), g.weight(6))
        return g.op("PRelu", norm, g.const(np.full((6, 1, 1), 0.1, np.float32), "p"))

    result = pruned(conv_chain(middle))
    assert prunable_rows(result)[0]["kept"] == 3


def test_group_norm_prunes_whole_groups():
    def middle(g, t):
        return g.op("GroupNormalization", t, g.weight(8), g.weight(8), num_groups=4)

    result = pruned(conv_chain(middle, c=8, opset=21))
    norm = [n for n in result.model.graph.node if n.op_type == "GroupNormalization"][0]
    assert [a.i for a in norm.attribute if a.name == "num_groups"] == [2]


@pytest.mark.parametrize("opset,axis,prunable", [(13, 3, True), (13, 1, False), (11, 1, False), (11, 2, True)])
def test_softmax_freezes_only_its_axes(opset, axis, prunable):
    model = conv_chain(lambda g, t: g.op("Softmax", t, axis=axis), opset=opset)
    groups = [g for g in onnxprune.analyze(model) if g.channels == 6]
    assert groups[0].prunable == prunable


def test_einsum_linear_layer():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 6))
    y = g.op("Einsum", t, g.weight(5, 6), equation="nchw,oc->nohw")
    z = g.op("GlobalAveragePool", g.conv(g.op("Relu", y), 5, 2))
    result = pruned(g.model(z))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(5, 3), (6, 3)]


def test_shared_weight_couples_its_users():
    g = GraphBuilder()
    w = g.weight(6, 4, 3, 3)
    a = g.op("Relu", g.op("Conv", "x", w, pads=[1, 1, 1, 1]))
    b = g.op("Relu", g.op("Conv", g.op("Neg", "x"), w, pads=[1, 1, 1, 1]))
    y = g.op("GlobalAveragePool", g.op("Add", g.conv(a, 6, 2), g.conv(b, 6, 2)))
    result = pruned(g.model(y))
    assert [(r["channels"], r["kept"]) for r in prunable_rows(result)] == [(6, 3)]


def test_shared_bias_is_split_per_use_and_does_not_couple_its_users():
    """torch's dynamo exporter stores one zero bias for every layer that has one."""
    g = GraphBuilder()
    bias = g.const(np.zeros(6, np.float32))
    a = g.op("Relu", g.op("Conv", "x", g.weight(6, 4, 3, 3), bias, pads=[1, 1, 1, 1]))
    b = g.op("Relu", g.op("Conv", "x", g.weight(6, 4, 3, 3), bias, pads=[1, 1, 1, 1]))
    y = g.op("GlobalAveragePool", g.op("Add", g.conv(a, 6, 2), g.conv(b, 6, 2)))
    result = pruned(g.model(y))
    assert [(r["channels"], r["kept"]) for r in prunable_rows(result)] == [(6, 3), (6, 3)]


def test_single_channel_concat_input_is_pinned():
    """A 1-channel input has no channel space; its position in the Concat must never be pruned."""
    g = GraphBuilder()
    one = g.op("Slice", "x", g.const(ints([1]), "i"), g.const(ints([2]), "i"), g.const(ints([1]), "i"))
    conv = g.op("Relu", g.conv("x", 4, 6))
    cat = g.op("Concat", g.op("GlobalAveragePool", one), g.op("GlobalAveragePool", conv), axis=1)
    y = g.gemm_head(g.op("Flatten", cat, axis=1), 7, 3)
    (group,) = [gr for gr in onnxprune.analyze(g.model(y)) if gr.channels == 7]
    (concat_space,) = [s for s in group.spaces if s.tensor == cat]
    assert group.pinned.tolist() == [group.channel_of[concat_space][0]]
    result = pruned(g.model(y), ratio=0.8)
    gemm = [e for e in result.plan["weights"].values() if e["shape"] == [3, 7]][0]
    assert gemm["kept"]["1"][0] == 0 and len(gemm["kept"]["1"]) == 3  # pinned + 2 of the conv's 6


def test_invalid_input_model_is_an_input_error():
    g = GraphBuilder(opset=13)
    y = g.op("GlobalAveragePool", g.conv(g.op("HardSwish", g.conv("x", 4, 6)), 6, 3))
    with pytest.raises(onnxprune.InputError, match="input model is not valid ONNX|cannot run"):
        onnxprune.prune(g.model(y), ratio=0.5)
