"""One tiny graph per op rule: the prunable group shrinks and matches the masked reference, or the
group is frozen with the expected reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain

import onnxprune
from onnxprune.analysis.rules.ops import ELEMENTWISE_UNARY, align_axes


def pruned(model, **options):
    """Prune at 0.5 (unless told otherwise) and check the verification ran and passed."""
    result = onnxprune.prune(model, **{"ratio": 0.5, **options})
    assert result.report["verification"]["ok"]
    return result


def groups_by_name(result):
    return {g["name"]: g for g in result.report["groups"]}


def prunable_rows(result):
    return [g for g in result.report["groups"] if g["frozen"] is None]


def frozen_reasons(model):
    return [g.frozen for g in onnxprune.analyze(model) if g.frozen]


@pytest.mark.parametrize("op", [o for o in ELEMENTWISE_UNARY if o not in ("Cast", "Clip")] + ["Clip", "Cast"])
def test_elementwise_ops_pass_channels_through(op):
    def middle(g, t):
        if op == "Clip":
            return g.op("Clip", t, g.const(np.float32(0)), g.const(np.float32(6)))
        if op == "Cast":
            return g.op("Cast", t, to=1)
        return g.op(op, t)

    result = pruned(conv_chain(middle, opset={"Gelu": 20, "Mish": 18}.get(op, 17)))
    (row,) = prunable_rows(result)
    assert (row["channels"], row["kept"]) == (6, 3)


def test_sdpa_nan_guard_where_passes_channels_through():
    def middle(g, t):
        return g.op("Where", g.op("IsNaN", t), g.const(np.float32(0)), t)

    result = pruned(conv_chain(middle))
    (row,) = prunable_rows(result)
    assert (row["channels"], row["kept"]) == (6, 3)


def conv_inputs(model):
    return [list(n.input) for n in model.graph.node if n.op_type == "Conv"]


def test_conv_bias_and_weights_are_sliced_and_recorded():
    model = conv_chain(lambda g, t: g.op("Relu", t), c=8)
    result = pruned(model)
    shapes = {name: entry["shape"] for name, entry in result.plan["weights"].items()}
    kept = {name: entry["kept"] for name, entry in result.plan["weights"].items()}
    (_, first_w, first_b), (_, second_w, _) = conv_inputs(model)
    assert shapes[first_w] == [8, 4, 3, 3] and list(kept[first_w]) == ["0"]
    assert shapes[first_b] == [8] and len(kept[first_b]["0"]) == 4
    assert list(kept[second_w]) == ["1"] and kept[second_w]["1"] == kept[first_w]["0"]
    init = {i.name: i for i in result.model.graph.initializer}
    assert list(init[first_w].dims) == [4, 4, 3, 3] and list(init[second_w].dims) == [3, 4, 3, 3]


def test_l1_keeps_the_largest_filters():
    g = GraphBuilder()
    scale = np.array([0.1, 5.0, 0.2, 3.0], dtype=np.float32)[:, None, None, None]
    w = g.const(np.ones((4, 4, 3, 3), dtype=np.float32) * scale)
    t = g.op("Conv", "x", w, pads=[1, 1, 1, 1])
    y = g.op("GlobalAveragePool", g.conv(g.op("Relu", t), 4, 2))
    result = pruned(g.model(y))
    assert result.plan["weights"][w]["kept"]["0"] == [1, 3]


def test_batchnorm_members_and_bn_scale_criterion():
    scale = np.array([0.1, 2.0, 0.3, 1.5, 0.05, 1.0], dtype=np.float32)
    model = conv_chain(lambda g, t: g.op("Relu", g.bn(t, 6, scale)))
    result = pruned(model, criterion="bn_scale")
    (row,) = prunable_rows(result)
    assert row["kept"] == 3
    bn_scale_name = [
        n
        for n, e in result.plan["weights"].items()
        if e["shape"] == [6]
        and np.allclose(onnx.numpy_helper.to_array({i.name: i for i in model.graph.initializer}[n]), scale)
    ][0]
    assert result.plan["weights"][bn_scale_name]["kept"]["0"] == [1, 3, 5]


def test_bn_scale_without_batchnorm_is_a_clear_error():
    with pytest.raises(onnxprune.InputError, match="bn_scale needs BatchNormalization"):
        onnxprune.prune(conv_chain(lambda g, t: g.op("Relu", t)), criterion="bn_scale")


def test_residual_add_couples_both_branches():
    g = GraphBuilder()
    a = g.conv("x", 4, 6)
    b = g.conv(g.op("Relu", a), 6, 6)
    s = g.op("Relu", g.op("Add", a, b))
    y = g.op("GlobalAveragePool", g.conv(s, 6, 3))
    result = pruned(g.model(y))
    rows = prunable_rows(result)
    coupled = [r for r in rows if len([m for m in r["members"] if m.startswith("w")]) >= 4]
    assert coupled and coupled[0]["kept"] == 3


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
def test_per_channel_constants_are_sliced_with_the_group(op):
    def middle(g, t):
        const = g.const(np.random.default_rng(1).uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32), "c")
        return g.op(op, t, const)

    result = pruned(conv_chain(middle))
    consts = [e for n, e in result.plan["weights"].items() if n.startswith("c")]
    assert consts and consts[0]["shape"] == [1, 6, 1, 1] and len(consts[0]["kept"]["1"]) == 3


def test_scalar_broadcast_constant_is_not_a_member():
    result = pruned(conv_chain(lambda g, t: g.op("Mul", t, g.const(np.float32(2.0), "s"))))
    assert not any(n.startswith("s") for n in result.plan["weights"])


def test_silu_mul_by_sigmoid():
    result = pruned(conv_chain(lambda g, t: g.op("Mul", t, g.op("Sigmoid", t))))
    assert prunable_rows(result)[0]["kept"] == 3


def test_division_by_an_activation_is_frozen():
    model = conv_chain(lambda g, t: g.op("Div", t, g.op("Tanh", t)))  # tanh(0) = 0
    assert any("division by an activation" in r for r in frozen_reasons(model))


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ],
)
def test_pooling_keeps_channels(op, attrs):
    result = pruned(conv_chain(lambda g, t: g.op(op, t, **attrs)))
    assert prunable_rows(result)[0]["kept"] == 3


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_space_feeds_a_linear_layer(keepdims):
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 8))
    pooled = g.op("ReduceMean", t, axes=[2, 3], keepdims=keepdims)
    if keepdims:
        pooled = g.op("Flatten", pooled, axis=1)
    y = g.gemm_head(g.op("Relu", g.gemm_head(pooled, 8, 6)), 6, 3)
    result = pruned(g.model(y))
    assert sorted((r["channels"], r["kept"]) for r in prunable_rows(result)) == [(6, 3), (8, 4)]


def test_reduce_over_the_channel_axis_freezes_it():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 8))
    y = g.op("ReduceMean", g.conv(t, 8, 6), axes=[1], keepdims=1)
    z = g.op("Add", g.conv(t, 8, 1), y)
    reasons = frozen_reasons(g.model(z))
    assert any("not mapped through ReduceMean" in r for r in reasons)


def test_flatten_into_gemm_prunes_blocks_of_features():
    g = GraphBuilder(shape=("N", 4, 4, 4))
    t = g.op("Relu", g.conv("x", 4, 6))
    pooled = g.op("MaxPool", t, kernel_shape=[2, 2], strides=[2, 2])
    y = g.gemm_head(g.op("Flatten", pooled, axis=1), 6 * 2 * 2, 3)
    result = pruned(g.model(y))
    gemm_w = [e for e in result.plan["weights"].values() if e["shape"] == [3, 24]][0]
    kept_features = gemm_w["kept"]["1"]
    assert len(kept_features) == 12
    assert all(kept_features[i + 1] == kept_features[i] + 1 for i in range(0, 12, 4) for _ in [0])


def test_reshape_into_matmul_with_constant_target():
    g = GraphBuilder(shape=(2, 4, 4, 4))
    t = g.op("Relu", g.conv("x", 4, 6))
    flat = g.op("Reshape", t, g.const(np.array([2, 96], dtype=np.int64), "shape"))
    y = g.op("MatMul", flat, g.weight(96, 3))
    result = pruned(g.model(y))
    shape_init = [i for i in result.model.graph.initializer if i.name.startswith("shape")][0]
    assert list(onnx.numpy_helper.to_array(shape_init)) == [2, 48]


def test_option_a_pad_shortcut_merges_stages():
    g = GraphBuilder(shape=("N", 3, 8, 8))
    a = g.op("Relu", g.conv("x", 3, 4))
    sub = g.op(
        "Slice",
        a,
        g.const(np.array([0, 0]), "i"),
        g.const(np.array([2**62, 2**62]), "i"),
        g.const(np.array([2, 3]), "i"),
        g.const(np.array([2, 2]), "i"),
    )
    padded = g.op("Pad", sub, g.const(np.array([0, 2, 0, 0, 0, 2, 0, 0]), "i"), g.const(np.float32(0), "i"))
    b = g.conv(g.op("Relu", g.conv(a, 4, 8, strides=[2, 2])), 8, 8)
    s = g.op("Relu", g.op("Add", b, padded))
    y = g.op("GlobalAveragePool", g.conv(s, 8, 3))
    result = pruned(g.model(y))
    stream = [r for r in prunable_rows(result) if r["channels"] == 8 and len(r["members"]) > 4]
    assert stream, result.report["groups"]
    pads = [i for i in result.model.graph.initializer if list(i.dims) == [8] and i.data_type == 7]
    assert pads


def test_unknown_op_freezes_with_a_reason():
    model = conv_chain(lambda g, t: g.op("LpNormalization", t, axis=1))
    assert any("no channel rule for op LpNormalization" in r for r in frozen_reasons(model))


def test_depthwise_conv_is_pruned_with_its_input():
    result = pruned(conv_chain(lambda g, t: g.op("Relu", g.conv(t, 6, 6, group=6))))
    dw = [n for n in result.model.graph.node if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert [a.i for a in dw[0].attribute if a.name == "group"] == [3]


def test_graph_input_and_output_groups_are_frozen():
    groups = onnxprune.analyze(conv_chain(lambda g, t: g.op("Relu", t)))
    reasons = sorted(g.frozen or "" for g in groups)
    assert reasons[0] == "" and "reaches graph input 'x'" in reasons and any("graph output" in r for r in reasons)


def test_shape_reading_channels_freezes():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 6))
    sizes = g.op("Cast", g.op("Shape", t), to=1)
    y = g.op("GlobalAveragePool", g.conv(t, 6, 3))
    model = g.model(y, sizes)
    assert any("read by Shape" in r for r in frozen_reasons(model))


def test_shape_reading_only_the_batch_is_allowed():
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 6))
    batch = g.op(
        "Unsqueeze", g.op("Gather", g.op("Shape", t), g.const(np.int64(0), "i"), axis=0), g.const(np.array([0]), "i")
    )
    target = g.op("Concat", batch, g.const(np.array([-1]), "i"), axis=0)
    y = g.gemm_head(g.op("Reshape", g.op("GlobalAveragePool", t), target), 6, 3)
    result = pruned(g.model(y))
    assert prunable_rows(result)[0]["kept"] == 3


def test_exclude_pattern_freezes_matching_groups():
    model = conv_chain(lambda g, t: g.op("Relu", t))
    groups = onnxprune.analyze(model, exclude=("Conv*",))
    assert all(g.frozen for g in groups)
    assert any("excluded by --exclude 'Conv*'" == g.frozen for g in groups)


@pytest.mark.parametrize(
    "ratio,round_to,expected", [(0.3, 1, 12), (0.7, 1, 5), (0.5, 8, 8), (0.3, 8, 16), (0.0, 1, 16)]
)
def test_ratio_and_round_to(ratio, round_to, expected):
    result = pruned(conv_chain(lambda g, t: g.op("Relu", t), c=16), ratio=ratio, round_to=round_to)
    assert prunable_rows(result)[0]["kept"] == expected


def test_min_channels_is_respected():
    result = pruned(conv_chain(lambda g, t: g.op("Relu", t), c=4), ratio=0.9, min_channels=2)
    assert prunable_rows(result)[0]["kept"] == 2


def test_global_scope_prunes_the_total_share():
    g = GraphBuilder()
    a = g.op("Relu", g.conv("x", 4, 8))
    b = g.op("Relu", g.conv(a, 8, 16))
    y = g.op("GlobalAveragePool", g.conv(b, 16, 3))
    result = pruned(g.model(y), scope="global")
    rows = prunable_rows(result)
    assert sum(r["channels"] - r["kept"] for r in rows) == 12


def test_random_criterion_is_seeded():
    model = conv_chain(lambda g, t: g.op("Relu", t), c=16)
    first = pruned(model, criterion="random", seed=3).plan["weights"]
    again = pruned(model, criterion="random", seed=3).plan["weights"]
    other = pruned(model, criterion="random", seed=4).plan["weights"]
    assert first == again and first != other


def test_fpgm_prunes_the_filter_nearest_the_median():
    g = GraphBuilder()
    w = g.const(np.stack([np.full((4, 3, 3), v, np.float32) for v in (0.0, 1.0, 10.0)]))
    t = g.op("Conv", "x", w, pads=[1, 1, 1, 1])
    y = g.op("GlobalAveragePool", g.conv(g.op("Relu", t), 3, 2))
    result = pruned(g.model(y), criterion="fpgm", ratio=0.4)
    assert result.plan["weights"][w]["kept"]["0"] == [0, 2]


@pytest.mark.parametrize(
    "in_shape,out_shape,expected",
    [
        (("N", 8, 1, 1), ("N", 8), [([0], [0]), ([1], [1]), ([2], []), ([3], [])]),
        (("N", 8, 2, 2), ("N", 32), [([0], [0]), ([1, 2, 3], [1])]),
        ((2, 6, 4), (2, 4, 6), [([0], [0]), ([1, 2], [1, 2])]),
        (("N", 8), ("M", 8), None),
        # GPT-2's Conv1D: [batch, seq, C] viewed as [batch*seq, C] around its Gemm, and back
        (("batch", "seq", 32), ("batch*seq", 32), [([0, 1], [0]), ([2], [1])]),
        (("batch*seq", 96), ("batch", "seq", 96), [([0], [0, 1]), ([1], [2])]),
        (("b*s", 4, 8), ("b", "s", 32), [([0], [0, 1]), ([1, 2], [2])]),
        (("b*s", 8), ("b", "t", 8), None),
    ],
)
def test_align_axes(in_shape, out_shape, expected):
    assert align_axes(in_shape, out_shape) == expected
