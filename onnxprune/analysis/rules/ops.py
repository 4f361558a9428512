"""Channel rules for the ops of plain CNNs: convolutions, normalization, activations, arithmetic,
pooling, reductions, reshapes into linear layers, padding and slicing.

Each rule relates the channel spaces of one node (see `Relations`); anything a rule leaves
unmentioned is frozen by the analysis with a generic reason.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from onnxprune.analysis.rules.attention import (
    batched_matmul,
    link_head_split,
    rewrite_shape_target,
    target_concat,
)
from onnxprune.analysis.rules.macs import (
    conv_macs,
    conv_transpose_macs,
    gemm_macs,
    matmul_macs,
)
from onnxprune.analysis.rules.norms import norm_of, relate_norm_node
from onnxprune.analysis.rules.registry import WeightLayout, rule
from onnxprune.analysis.rules.shape_entries import (
    copied_dims,
    copies_into,
    feeds_copies_only,
)
from onnxprune.model.nodes import attr

ELEMENTWISE_UNARY = (
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Identity",
    "Dropout",
    "Cast",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Neg",
    "Abs",
    "Erf",
    "Gelu",
    "Mish",
    "ThresholdedRelu",
    "Exp",
    "Sqrt",
    "Floor",
    "Ceil",
    "Round",
)

#: Element-wise tests that make a bool mask of the same shape (SDPA's NaN guard reads IsNaN).
ELEMENTWISE_MASKS = ("IsNaN", "IsInf", "Not")


def in_norm(rel, node, view) -> bool:
    """Relate `node` as part of a decomposed LayerNorm/RMSNorm when it is one (True), else False."""
    norm = norm_of(view, node)
    if norm is None:
        return False
    relate_norm_node(rel, node, view, norm)
    return True


@rule(*ELEMENTWISE_UNARY, mapping="every axis passes through unchanged", freezes_when="never")
def elementwise(rel, node, view):
    """Unary element-wise ops: every axis passes through. Each maps 0 to a finite value, so a pruned
    channel (zero in the masked reference) stays finite and its consumers' zeroed columns remove it
    (a non-zero value such as hardsigmoid(0) = 0.5 is harmless: nothing reads it but zeroed weights,
    or a Mul with the same, zeroed, channel)."""
    if not in_norm(rel, node, view):
        rel.identity(node.input[0], node.output[0])


rule(*ELEMENTWISE_MASKS, mapping="every axis passes through unchanged", freezes_when="never")(elementwise)


@rule(
    "Pow",
    mapping="a scalar constant exponent >= 0: every axis of the base passes through",
    freezes_when="a negative, per-channel or computed exponent (0 to a negative power is infinite)",
)
def power(rel, node, view):
    """Pow(x, p) with a scalar constant p >= 0 maps a pruned (zero) channel to 0 or 1: finite."""
    if in_norm(rel, node, view):
        return
    exponent = view.value(node.input[1])
    if exponent is None or exponent.size != 1 or view.is_const(node.input[0]):
        return rel.freeze_node("Pow with a computed or per-channel exponent")
    if not float(exponent.reshape(-1)[0]) >= 0:
        return rel.freeze_node("Pow with a negative exponent maps a pruned (zero) channel to infinity")
    for axis in range(rel.rank(node.input[1])):
        rel.touch(node.input[1], axis)
    rel.identity(node.input[0], node.output[0])


@rule(
    "Reciprocal",
    mapping="inside a decomposed LayerNorm/RMSNorm: as the normalization; of a "
    "provably positive tensor (e.g. sqrt(var + eps)): every axis passes through",
    freezes_when="elsewhere: 1/0 is infinite, so a pruned (zero) channel would poison its consumers",
)
def reciprocal(rel, node, view):
    """Reciprocal: as the 1/σ of a recognized normalization, or of a tensor that is never 0."""
    if in_norm(rel, node, view):
        return
    if is_positive(view, node.input[0]):
        return rel.identity(node.input[0], node.output[0])
    rel.freeze_node("Reciprocal maps a pruned (zero) channel to infinity")


NONNEGATIVE_UNARY = ("Relu", "Abs", "Sqrt", "Exp", "Softplus", "Sigmoid", "ReduceSumSquare", "ReduceL1", "ReduceL2")
POSITIVE_UNARY = ("Exp", "Sigmoid", "Softplus")
SHAPE_ONLY = ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Flatten")


def is_positive(view, name: str, strict: bool = True, depth: int = 12) -> bool:
    """True when every element of `name` is > 0 (`strict`) or >= 0 whatever the input — e.g.
    sqrt(max(0, var) + eps), exp(x), a sum of exponentials: dividing by it stays finite when
    channels are masked to zero."""
    value = view.value(name)
    if value is not None:
        return bool(np.all(value > 0) if strict else np.all(value >= 0))
    node = view.producer.get(name)
    if node is None or depth == 0:
        return False
    inputs, op = [i for i in node.input if i], node.op_type
    if op in SHAPE_ONLY or op in (
        "Sqrt",
        "ReduceSum",
        "ReduceMax",
        "ReduceMean",
        "MaxPool",
        "GlobalMaxPool",
        "GlobalAveragePool",
        "AveragePool",
    ):
        return is_positive(view, inputs[0], strict, depth - 1)
    if op in POSITIVE_UNARY or (not strict and op in NONNEGATIVE_UNARY):
        return True
    if op == "Mul" and not strict and len(inputs) == 2 and inputs[0] == inputs[1]:
        return True  # a square
    if op not in ("Add", "Mul", "Max"):
        return False
    nonnegative = [is_positive(view, i, False, depth - 1) for i in inputs]
    positive = [is_positive(view, i, True, depth - 1) for i in inputs] if strict else nonnegative
    if op == "Max":  # at least one operand's bound holds everywhere
        return any(positive)
    if op == "Mul":
        return all(positive)
    return all(nonnegative) and any(positive)  # Add


@rule(
    "Conv",
    mapping="weight axis 0 = output channels; weight axis 1 = input channels; "
    "depthwise (group = C_in) ties input to output channels; grouped convolutions prune whole groups",
    freezes_when="weight not constant; group sizes that do not divide the channels",
    rewrite=lambda node, ctx: rewrite_group(node, ctx),
    macs=conv_macs,
    layout=WeightLayout(out_axis=0, in_axis=1, bias=2, grouped=True, kernel=True, timed=True, refit=True),
)
def conv(rel, node, view):
    """Conv: producer of its output channels, consumer of its input channels."""
    x, w, y = node.input[0], node.input[1], node.output[0]
    if not view.is_const(w):
        return rel.freeze_node("convolution weight is computed at run time")
    rel.link(x, 0, y, 0)
    rel.weight(w, 0, "out", 0.0, like=(y, 1))
    if attr(node, "group", 1) == 1:
        rel.weight(w, 1, "in", 0.0, like=(x, 1))
    else:
        rel.touch(w, 1)
        link_groups(rel, node, x, y)
    if len(node.input) > 2 and node.input[2]:
        rel.weight(node.input[2], 0, "param", 0.0, like=(y, 1))


def link_groups(rel, node, x: str, y: str) -> None:
    """Grouped/depthwise convolution: a group's input and output channels go together."""
    group, c_in, c_out = attr(node, "group", 1), rel.size(x, 1), rel.size(y, 1)
    if group < 1 or not (isinstance(c_in, int) and isinstance(c_out, int)) or c_in % group or c_out % group:
        return rel.freeze_node(f"group={group} does not divide the channels")
    if group == c_in:
        rel.link(x, 1, y, 1, block=c_out // c_in)
        return
    groups = rel.virtual("groups", group)
    rel.link(groups, 0, x, 1, block=c_in // group)
    rel.link(groups, 0, y, 1, block=c_out // group)


def rewrite_group(node, ctx) -> None:
    """A grouped convolution's `group` shrinks with the groups its pruned input loses."""
    group = attr(node, "group", 1)
    if group > 1:
        c_in = ctx.shape(node.input[0])[1]
        ctx.set_attr(node, "group", group * ctx.new_size(node.input[0], 1) // c_in)


@rule(
    "ConvTranspose",
    mapping="weight axis 0 = input channels; weight axis 1 = output channels "
    "per group; depthwise and grouped as for Conv",
    freezes_when="weight not constant",
    rewrite=lambda node, ctx: rewrite_group(node, ctx),
    macs=conv_transpose_macs,
    layout=WeightLayout(out_axis=1, in_axis=0, bias=2, grouped=True, kernel=True, timed=True),
)
def conv_transpose(rel, node, view):
    """ConvTranspose: weight layout [C_in, C_out / group, k...]."""
    x, w, y = node.input[0], node.input[1], node.output[0]
    if not view.is_const(w):
        return rel.freeze_node("convolution weight is computed at run time")
    rel.link(x, 0, y, 0)
    group = attr(node, "group", 1)
    if group == 1:
        rel.weight(w, 0, "in", 0.0, like=(x, 1))
        rel.weight(w, 1, "out", 0.0, like=(y, 1))
    else:
        rel.weight(w, 0, "out" if group == rel.size(x, 1) else "in", 0.0, like=(x, 1))
        rel.touch(w, 1)
        link_groups(rel, node, x, y)
    if len(node.input) > 2 and node.input[2]:
        rel.weight(node.input[2], 0, "param", 0.0, like=(y, 1))


@rule(
    "BatchNormalization",
    mapping="every axis passes through; scale/bias/mean/var follow axis 1",
    freezes_when="training-mode outputs; statistics not constant",
)
def batch_norm(rel, node, view):
    """BatchNormalization: per-channel affine; |scale| is the bn_scale criterion."""
    x, y = node.input[0], node.output[0]
    if len([o for o in node.output if o]) > 1 or not all(view.is_const(n) for n in node.input[1:5]):
        return rel.freeze_node("BatchNormalization in training mode")
    rel.identity(x, y)
    scale, bias, mean, var = node.input[1:5]
    rel.weight(scale, 0, "bn_scale", 0.0, like=(y, 1))
    rel.weight(bias, 0, "param", 0.0, like=(y, 1))
    rel.weight(mean, 0, "stat", None, like=(y, 1))
    rel.weight(var, 0, "stat", None, like=(y, 1))


BROADCAST_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu", "Sum", "Mean")


@rule(
    *BROADCAST_BINARY,
    mapping="numpy broadcasting: equal axes are coupled; per-channel "
    "constants become group members (n-ary Sum/Mean/Max/Min: every input)",
    freezes_when="Div: the divisor is an activation",
)
def broadcast_binary(rel, node, view):
    """Element-wise binary ops couple every non-broadcast axis of their inputs and output."""
    if in_norm(rel, node, view):
        return
    y = node.output[0]
    for index, name in enumerate(node.input):
        if (
            node.op_type == "Div"
            and index == 1
            and not view.is_const(name)
            and not is_positive(view, name)
            and not _is_scalar(view, name)
        ):  # a scalar divides every channel alike
            rel.freeze_node("division by an activation that may be 0")
            return
        broadcast_operand(rel, view, name, y, fill=1.0 if (node.op_type == "Div" and index == 1) else 0.0)


def broadcast_operand(rel, view, name: str, y: str, fill: float | None) -> None:
    """Couple the axes of one operand of a broadcasting op with `y`'s (aligned right): size-1 axes
    broadcast, a constant's axes are members (`fill`: what a pruned slice holds in the masked
    reference, None: untouched), an activation's axes are linked."""
    rank, out_rank = rel.rank(name), rel.rank(y)
    for axis in range(rank):
        out_axis = out_rank - rank + axis
        if rel.size(name, axis) == 1:
            rel.touch(name, axis)
        elif view.is_const(name):
            rel.weight(name, axis, "param", fill, like=(y, out_axis))
        else:
            rel.link(name, axis, y, out_axis)


COMPARISONS = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")


@rule(
    *COMPARISONS,
    mapping="an activation's axes pass through where the other operand broadcasts (size 1)",
    freezes_when="an axis a constant contributes (a one-hot encoding: the classes "
    "compared with are input features) or compares per channel (a masked 0 would not map to 0)",
)
def comparison(rel, node, view):
    """Comparisons make a bool mask: an axis passes through only where one activation alone
    sets it (a pruned channel's 0 compares to a value its zeroed consumers then ignore)."""
    y = node.output[0]
    out_rank = rel.rank(y)
    operands = [(name, rel.rank(name)) for name in node.input]
    for out_axis in range(out_rank):
        sized = [
            (name, out_axis - out_rank + rank)
            for name, rank in operands
            if out_axis - out_rank + rank >= 0 and rel.size(name, out_axis - out_rank + rank) != 1
        ]
        for name, rank in operands:
            if out_axis - out_rank + rank >= 0 and rel.size(name, out_axis - out_rank + rank) == 1:
                rel.touch(name, out_axis - out_rank + rank)
        if len(sized) == 1 and not view.is_const(sized[0][0]):
            rel.link(*sized[0], y, out_axis)
            continue
        what = (
            "compares with a constant's axis (the classes of a one-hot encoding are input features, not channels)"
            if any(view.is_const(n) for n, _ in sized)
            else "compares two activations"
        )
        for name, axis in sized:
            rel.freeze(name, axis, f"{rel.label} {what}")
        rel.freeze(y, out_axis, f"{rel.label} {what}")


@rule(
    "Where",
    mapping="numpy broadcasting over condition, X and Y: equal axes are coupled; "
    "per-channel constants become group members",
    freezes_when="never",
)
def where(rel, node, view):
    """Where(c, x, y) picks element-wise, so every non-broadcast axis of its three inputs and its output
    is one space (SDPA's NaN guard `Where(IsNaN(p), 0, p)`, additive masks `Where(m, -inf, 0)`). A pruned
    channel picks between finite values, which only zeroed consumers read."""
    for name in node.input:
        broadcast_operand(rel, view, name, node.output[0], fill=None)


rule(
    "And",
    "Or",
    "Xor",
    mapping="numpy broadcasting: equal axes are coupled (attention masks combined)",
    freezes_when="never",
)(where)


def _is_scalar(view, name: str) -> bool:
    """True when a tensor's every axis has size 1 (it broadcasts over every channel)."""
    shape = view.shape(name)
    return shape is not None and all(d == 1 for d in shape)


POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@rule(
    *POOLS,
    mapping="batch and channel axes pass through; spatial axes are pooled",
    freezes_when="MaxPool with an Indices output",
)
def pool(rel, node, view):
    """Pooling over spatial axes keeps channels."""
    if len([o for o in node.output if o]) > 1:
        return rel.freeze_node("MaxPool indices encode channel offsets")
    rel.link(node.input[0], 0, node.output[0], 0)
    rel.link(node.input[0], 1, node.output[0], 1)


REDUCES = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceL1",
    "ReduceL2",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceLogSumExp",
)


@rule(
    *REDUCES,
    mapping="axes that are not reduced pass through",
    freezes_when="the channel axis is reduced; axes computed at run time",
)
def reduce(rel, node, view):
    """Reductions: kept axes pass through (reducing over channels freezes them)."""
    if in_norm(rel, node, view):
        return
    x, y = node.input[0], node.output[0]
    axes = _reduce_axes(node, view, rel.rank(x))
    if axes is None:
        return rel.freeze_node("reduction axes computed at run time")
    keepdims = attr(node, "keepdims", 1)
    out_axis = 0
    for axis in range(rel.rank(x)):
        if axis in axes:
            out_axis += keepdims
            continue
        rel.link(x, axis, y, out_axis)
        out_axis += 1


def _reduce_axes(node, view, rank: int) -> set[int] | None:
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = view.value(node.input[1])
        if value is None:
            return None
        axes = value.tolist()
    if not axes:
        return set() if attr(node, "noop_with_empty_axes", 0) else set(range(rank))
    return {a % rank for a in axes}


@rule(
    "Gemm",
    mapping="B's contracted axis = input features; its other axis = output features; C follows the output",
    freezes_when="B is an activation (not a weight); A is a constant",
    macs=gemm_macs,
    layout=WeightLayout(
        out_axis=1,
        in_axis=0,
        bias=2,
        transposed_by="transB",
        input_transposed_by="transA",
        gain=("alpha", "beta"),
        timed=True,
        refit=True,
    ),
)
def gemm(rel, node, view):
    """Gemm with constant B: a Linear layer."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    if not view.is_const(b) or view.is_const(a):
        return rel.freeze_node("Gemm without a constant weight B")
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    rel.link(a, 1 if trans_a else 0, y, 0)
    rel.weight(b, 1 if trans_b else 0, "in", 0.0, like=(a, 0 if trans_a else 1))
    rel.weight(b, 0 if trans_b else 1, "out", 0.0, like=(y, 1))
    if len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        for axis in range(rel.rank(bias)):
            out_axis = 2 - rel.rank(bias) + axis
            if rel.size(bias, axis) == 1:
                rel.touch(bias, axis)
            else:
                rel.weight(bias, axis, "param", 0.0, like=(y, out_axis))


@rule(
    "MatMul",
    mapping="constant B [K, N]: K = input features (A's last axis), N = output "
    "features; leading axes of A pass through; two activations (attention q·kᵀ, softmax·v): "
    "batch axes (heads) coupled, the contracted axes coupled",
    freezes_when="a constant weight that is not 2-D, or a constant A",
    macs=matmul_macs,
    layout=WeightLayout(out_axis=1, in_axis=0, matrix=True, timed=True, refit=True),
)
def matmul(rel, node, view):
    """MatMul by a constant 2-D weight (a Linear layer), or of two activations (attention)."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    if not view.is_const(a) and not view.is_const(b):
        return batched_matmul(rel, node, view)
    if not view.is_const(b) or rel.rank(b) != 2 or rel.rank(a) < 2:
        return rel.freeze_node("MatMul without a constant 2-D weight")
    for axis in range(rel.rank(a) - 1):
        rel.link(a, axis, y, axis)
    rel.weight(b, 0, "in", 0.0, like=(a, -1))
    rel.weight(b, 1, "out", 0.0, like=(y, -1))


@rule(
    "Flatten",
    mapping="the outer flattened axis maps to blocks of features (one channel = a block of H*W features)",
    freezes_when="channels are not the outermost flattened axis",
)
def flatten(rel, node, view):
    """Flatten: an axis merged with the axes after it becomes a block of features."""
    x, y = node.input[0], node.output[0]
    shape = view.shape(x)
    split = attr(node, "axis", 1) % len(shape) if shape else 1
    _link_outer(rel, x, list(range(split)), y, 0)
    _link_outer(rel, x, list(range(split, len(shape))), y, 1)


def _link_outer(rel, parts: str, part_axes: list[int], whole: str, whole_axis: int) -> None:
    """Axes `part_axes` of `parts` are one axis of `whole` (merged by Flatten/Reshape, or `whole`
    split into them): link their outermost non-unit axis to it, one index = a block of the rest."""
    shape = rel.view.shape(parts)
    real = [a for a in part_axes if shape[a] != 1]
    for axis in part_axes:
        if shape[axis] == 1:
            rel.touch(parts, axis)
    inner = [shape[a] for a in real[1:]]
    if real and all(isinstance(d, int) for d in inner):
        rel.link(parts, real[0], whole, whole_axis, block=int(np.prod(inner, dtype=np.int64)))


def _link_regrouped(rel, x: str, in_axes: list[int], y: str, out_axes: list[int]) -> None:
    """[S, C] -> [S / k, k * C] (k consecutive rows of C features become one row, as a Keras
    model folds k tokens of its embedding into one): feature c of the input is the k features
    c, C + c, ... of the output's inner axis, and one outer output index is k input rows."""
    (s, c), (outer, inner) = (rel.size(x, a) for a in in_axes), (rel.size(y, a) for a in out_axes)
    if not all(isinstance(d, int) for d in (s, c, outer, inner)) or inner % c or s != outer * (inner // c):
        return
    tiles = inner // c
    for tile in range(tiles):
        rel.link(x, in_axes[1], y, out_axes[1], offset=tile * c)
    rel.link(y, out_axes[0], x, in_axes[0], block=tiles)


def align_axes(in_shape: tuple, out_shape: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input and output axes whose sizes multiply to the same value (a Reshape).

    Dynamic dims pair only with the identical symbol. Returns None when no pairing exists.
    """
    pairs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        if i < len(in_shape) and not isinstance(in_shape[i], int):
            if in_shape[i] is None or j >= len(out_shape) or in_shape[i] != out_shape[j]:
                run = None if in_shape[i] is None else symbolic_run(in_shape, out_shape, i, j)
                if run is None:
                    return None if in_shape[i] is None else _dynamic_tail(pairs, in_shape, out_shape, i, j)
                pairs.append((list(range(i, run[0])), list(range(j, run[1]))))
                i, j = run
                continue
            pairs.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        run = _match_run(in_shape, out_shape, i, j) or symbolic_run(in_shape, out_shape, i, j)
        if run is None:
            return _dynamic_tail(pairs, in_shape, out_shape, i, j)
        pairs.append((list(range(i, run[0])), list(range(j, run[1]))))
        i, j = run
    return pairs


def _dynamic_tail(pairs: list, in_shape: tuple, out_shape: tuple, i: int, j: int) -> list | None:
    """After equal leading runs, the rest of both shapes is one run when it holds a dynamic dim on
    each side and one side is a single axis (e.g. [N, C, H, W] -> [N, C, H*W] with dynamic H, W):
    the leading pairs stand."""
    rest_in, rest_out = in_shape[i:], out_shape[j:]
    if (
        not pairs
        or not rest_in
        or not rest_out
        or min(len(rest_in), len(rest_out)) != 1
        or all(isinstance(d, int) for d in rest_in)
        or all(isinstance(d, int) for d in rest_out)
    ):
        return None
    return pairs + [(list(range(i, len(in_shape))), list(range(j, len(out_shape))))]


def symbolic_run(a: tuple, b: tuple, i: int, j: int) -> tuple[int, int] | None:
    """Smallest run a[i:i2], b[j:j2] with equal products counting symbols as factors: shape
    inference writes a flattened dynamic axis as the product ``batch*seq`` (GPT-2's Conv1D views
    [batch, seq, C] as [batch*seq, C] around its Gemm). None when a dim is unknown or no run fits."""
    left: tuple[int, Counter] = (1, Counter())
    right: tuple[int, Counter] = (1, Counter())
    i2, j2 = i, j
    while not (i2 > i and j2 > j and left == right):
        if i2 == i or (j2 > j and _divides(left, right)):
            factor = _factors(a[i2]) if i2 < len(a) else None
            if factor is None:
                return None
            left, i2 = _times(left, factor), i2 + 1
        elif j2 == j or _divides(right, left):
            factor = _factors(b[j2]) if j2 < len(b) else None
            if factor is None:
                return None
            right, j2 = _times(right, factor), j2 + 1
        else:
            return None
    return i2, j2


def _factors(dim) -> tuple[int, Counter] | None:
    """A dim as (constant factor, symbol counts): 6 -> (6, {}), 'batch*seq' -> (1, {batch, seq})."""
    if isinstance(dim, int):
        return dim, Counter()
    if not isinstance(dim, str) or not dim:
        return None
    coef, symbols = 1, Counter[str]()
    for piece in dim.replace(" ", "").split("*"):
        if piece.isdigit():
            coef *= int(piece)
        else:
            symbols[piece] += 1
    return coef, symbols


def _times(x: tuple[int, Counter], y: tuple[int, Counter]) -> tuple[int, Counter]:
    return x[0] * y[0], x[1] + y[1]


def _divides(x: tuple[int, Counter], y: tuple[int, Counter]) -> bool:
    """x divides y, and is not equal to it."""
    return x != y and y[0] % x[0] == 0 and all(y[1][s] >= n for s, n in x[1].items())


def _match_run(a: tuple, b: tuple, i: int, j: int) -> tuple[int, int] | None:
    """Smallest run a[i:i2], b[j:j2] (each side advancing once at least) with equal products."""
    left = right = 1
    i2, j2 = i, j
    while True:
        if i2 < len(a) and isinstance(a[i2], int) and (left < right or i2 == i):
            left, i2 = left * a[i2], i2 + 1
        elif j2 < len(b) and isinstance(b[j2], int) and (right < left or j2 == j):
            right, j2 = right * b[j2], j2 + 1
        elif left == right:
            return i2, j2
        else:
            return None


@rule(
    "Reshape",
    mapping="axes are paired by their sizes: equal axes pass through, merged axes "
    "become blocks, a split axis maps blocks of inputs to its outer part; a split of the last "
    "axis into [..., H, D] (attention heads) makes one head one channel",
    freezes_when="the pairing is ambiguous; a split of any other axis (channel shuffle); the "
    "target shape of a channel axis is computed at run time",
    rewrite=lambda node, ctx: rewrite_shape_target(node, ctx),
)
def reshape(rel, node, view):
    """Reshape (e.g. flattening [N, C, 1, 1] into [N, C] before a Linear layer)."""
    x, y = node.input[0], node.output[0]
    pairs = align_axes(view.shape(x), view.shape(y))
    if pairs is None:
        return
    target = _target_entries(view, node.input[1], rel.rank(y), data=x)
    for in_axes, out_axes in pairs:
        sizes = [view.shape(y)[a] for a in out_axes if view.shape(y)[a] != 1]
        if len(out_axes) == 1:
            _link_outer(rel, x, in_axes, y, out_axes[0])
        elif len(in_axes) == 1 and len(sizes) > 1 and link_head_split(rel, x, in_axes[0], y, out_axes):
            continue
        elif len(in_axes) == 1 and len(sizes) > 1:
            reason = (
                f"{rel.label} splits channels into {sizes} (a channel shuffle or channel "
                "groups): pruning would reorder them"
            )
            for name, axis in [(x, in_axes[0])] + [(y, a) for a in out_axes]:
                rel.freeze(name, axis, reason)
        elif len(in_axes) == 1:
            _link_outer(rel, y, out_axes, x, in_axes[0])
        elif len(in_axes) == len(out_axes) == 2:
            _link_regrouped(rel, x, in_axes, y, out_axes)
    for out_axis in range(rel.rank(y)):
        if target[out_axis] is None:
            rel.freeze(y, out_axis, f"the target shape is computed at run time ({rel.label})")


def _target_entries(view, name: str, rank: int, data: str | None = None) -> list:
    """The Reshape target per output axis: an int, or None when computed at run time (-1 is fine);
    0 for entries that copy `data`'s own sizes (``Shape(data)[s:e]`` at positions s..e-1)."""
    value = view.value(name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    producer = target_concat(view.producer, name)
    if producer is None:
        return [None] * rank
    entries: list[int | None] = []
    for piece in producer.input:
        piece_value = view.value(piece)
        size = (view.shape(piece) or (None,))[0]
        if piece_value is not None:
            entries += [int(v) for v in piece_value.reshape(-1)]
        elif data is not None and isinstance(size, int) and copied_dims(view, piece, data, len(entries)):
            entries += [0] * size
        else:
            entries += [None] * (size if isinstance(size, int) else 1)
    return entries if len(entries) == rank else [None] * rank


@rule("Transpose", mapping="axis perm[i] of the input is axis i of the output")
def transpose(rel, node, view):
    """Transpose moves the channel axis."""
    x, y = node.input[0], node.output[0]
    perm = attr(node, "perm") or list(reversed(range(rel.rank(x))))
    for out_axis, in_axis in enumerate(perm):
        rel.link(x, in_axis, y, out_axis)


@rule("Squeeze", "Unsqueeze", mapping="non-unit axes pass through in order")
def squeeze(rel, node, view):
    """Squeeze/Unsqueeze only add or remove unit axes."""
    x, y = node.input[0], node.output[0]
    in_axes = [a for a, d in enumerate(view.shape(x)) if d != 1]
    out_axes = [a for a, d in enumerate(view.shape(y)) if d != 1]
    if len(in_axes) != len(out_axes):
        return
    for a, b in zip(in_axes, out_axes):
        rel.link(x, a, y, b)


@rule(
    "Pad",
    mapping="unpadded axes pass through; constant padding on the channel axis embeds the "
    "input channels at an offset (ResNet option-A shortcut)",
    freezes_when="non-constant mode or negative pads on the channel axis; pads computed at run time",
    rewrite=lambda node, ctx: _rewrite_pad(node, ctx),
)
def pad(rel, node, view):
    """Pad: zero channels added before/after the input channels."""
    x, y = node.input[0], node.output[0]
    pads = _pads(node, view, rel.rank(x))
    if pads is None:
        return rel.freeze_node("pads computed at run time")
    rank, mode = rel.rank(x), attr(node, "mode", b"constant")
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before == 0 and after == 0:
            rel.link(x, axis, y, axis)
        elif mode in (b"constant", "constant") and before >= 0 and after >= 0:
            rel.link(x, axis, y, axis, offset=before)


def _pads(node, view, rank: int) -> list[int] | None:
    if len(node.input) < 2 or not node.input[1]:
        values = attr(node, "pads")
        return list(values) if values is not None else None
    values = view.value(node.input[1])
    if values is None:
        return None
    values = [int(v) for v in values]
    axes = _const_list(view, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if axes is None:
        return values
    full = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        full[axis % rank], full[axis % rank + rank] = values[k], values[k + len(axes)]
    return full


def _const_list(view, name: str) -> list[int] | None:
    value = view.value(name)
    return None if value is None else [int(v) for v in value.reshape(-1)]


def _rewrite_pad(node, ctx) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    pads = _pads(node, ctx.view, rank)
    assert pads is not None, "the Pad rule froze the node when its pads are computed at run time"
    new = list(pads)
    for axis in range(rank):
        kept = ctx.kept(y, axis)
        if kept is None or pads[axis] == 0 and pads[axis + rank] == 0:
            continue
        in_size = ctx.shape(x)[axis]
        new[axis] = int(np.sum(kept < pads[axis]))
        new[axis + rank] = int(np.sum(kept >= pads[axis] + in_size))
    if new != pads:
        _write_pads(node, ctx, new, rank)


def _write_pads(node, ctx, pads: list[int], rank: int) -> None:
    if len(node.input) < 2 or not node.input[1]:
        ctx.set_attr(node, "pads", pads)
        return
    axes = _const_list(ctx.view, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if axes is not None:
        axes = [a % rank for a in axes]
        pads = [pads[a] for a in axes] + [pads[a + rank] for a in axes]
    ctx.set_input(node, 1, np.array(pads, dtype=np.int64))


@rule(
    "Slice",
    mapping="unsliced axes pass through; a contiguous range (step 1) of the channel axis "
    "maps to an offset of the input's channels",
    freezes_when="strided or reversed slicing of a channel axis; bounds computed at run time",
    rewrite=lambda node, ctx: _rewrite_slice(node, ctx),
)
def slice_(rel, node, view):
    """Slice: spatial subsampling passes channels through; a channel range is an offset."""
    x, y = node.input[0], node.output[0]
    ranges = _slice_ranges(node, view)
    if ranges is None:
        ranges = _computed_slice_axes(node, view, rel.rank(x))
        if ranges is None:
            return rel.freeze_node("Slice bounds and axes computed at run time")
    for axis in range(rel.rank(x)):
        if axis not in ranges and view.is_const(x):
            rel.weight(x, axis, "param", 0.0, like=(y, axis))
        elif axis not in ranges:
            rel.link(x, axis, y, axis)
        elif ranges[axis] is None:
            what = (
                "bounds computed at run time"
                if view.shape(x)[axis] is not None and isinstance(view.shape(x)[axis], int)
                else "a part of an axis of dynamic size"
            )
            rel.freeze(x, axis, f"Slice {what} ({rel.label})")
        elif ranges[axis][2] == 1:
            rel.link(y, axis, x, axis, offset=ranges[axis][0])


def _computed_slice_axes(node, view, rank: int) -> dict[int, None] | None:
    """The sliced axes (each -> None) of a Slice whose bounds are computed at run time but whose
    `axes` are constant (e.g. a position embedding cut to the sequence length); else None."""
    if len(node.input) < 4 or not node.input[3]:
        return None
    axes = _const_list(view, node.input[3])
    return None if axes is None else {a % rank: None for a in axes}


def _slice_ranges(node, view) -> dict[int, tuple[int, int, int] | None] | None:
    """Sliced axes -> (start, end, step), normalized to the axis size (None: an axis of unknown size not
    wholly kept); full ranges are left out."""
    starts, ends, axes, steps = _slice_bounds(node, view)
    shape = view.shape(node.input[0])
    if starts is None or ends is None:
        return None
    axes = [a % len(shape) for a in (axes or range(len(starts)))]
    ranges: dict[int, tuple[int, int, int] | None] = {}
    for axis, start, end, step in zip(axes, starts, ends, steps or [1] * len(axes)):
        size = shape[axis]
        if not isinstance(size, int):
            if not _covers_dynamic_axis(start, end, step):
                ranges[axis] = None  # only this axis is unknown: the others are judged on their own
            continue
        begin, stop, _ = slice(start, end, step).indices(size)
        if (begin, stop, step) != (0, size, 1):
            ranges[axis] = (begin, stop, step)
    return ranges


SLICE_TO_END = 2**31 - 1  # INT32_MAX / INT64_MAX ends (tf2onnx, jax2tf, torch) mean "to the end"


def _covers_dynamic_axis(start: int, end: int, step: int) -> bool:
    """True when a Slice keeps the whole of an axis of unknown size: from 0 to "the end"."""
    return step == 1 and start == 0 and end >= SLICE_TO_END


def _slice_bounds(node, view) -> list:
    """starts, ends, axes, steps of a Slice (inputs since opset 10, attributes before)."""
    if len(node.input) == 1:
        return [attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None]
    names = (list(node.input[1:5]) + [""] * 4)[:4]
    return [_const_list(view, n) if n else None for n in names]


def _rewrite_slice(node, ctx) -> None:
    starts, ends, axes, _ = _slice_bounds(node, ctx.view)
    if starts is None or ends is None:
        return  # computed bounds: only unsliced axes lost channels
    shape = ctx.shape(node.input[0])
    axes = [a % len(shape) for a in (axes or range(len(starts)))]
    new_starts, new_ends = list(starts), list(ends)
    for k, axis in enumerate(axes):
        kept = ctx.kept(node.input[0], axis)
        if kept is None:
            continue
        begin, stop, _ = slice(starts[k], ends[k], 1).indices(shape[axis])
        new_starts[k] = int(np.sum(kept < begin))
        new_ends[k] = new_starts[k] + ctx.new_size(node.output[0], axis)
    if (new_starts, new_ends) == (starts, ends):
        return
    if len(node.input) == 1:
        ctx.set_attr(node, "starts", new_starts)
        ctx.set_attr(node, "ends", new_ends)
    else:
        dtype = ctx.const(node.input[1]).dtype
        ctx.set_input(node, 1, np.array(new_starts, dtype=dtype))
        ctx.set_input(node, 2, np.array(new_ends, dtype=dtype))


@rule(
    "Concat",
    mapping="each input's channels sit at an offset of the output's channel axis; other axes are coupled",
    freezes_when="an input's size on the concat axis is dynamic",
)
def concat(rel, node, view):
    """Concat: input k's channels are output channels [offset_k, offset_k + C_k)."""
    y = node.output[0]
    link_pieces(rel, view, y, list(node.input), attr(node, "axis") % rel.rank(y))


def link_pieces(rel, view, whole: str, pieces: list[str], axis: int) -> None:
    """`pieces` laid end to end on `axis` make `whole` (Concat inputs, Split outputs); every
    other axis is shared. Constant pieces become members of the group."""
    offset = 0
    dynamic = not all(isinstance(rel.size(p, axis), int) for p in pieces)
    if dynamic and isinstance(rel.size(whole, axis), int):
        return rel.freeze_node(f"{rel.node.op_type} of dynamic-sized pieces")
    for piece in pieces:
        size = rel.size(piece, axis)
        if dynamic:  # e.g. a class token joined to the patch tokens: the other axes are shared
            rel.touch(piece, axis)
            rel.touch(whole, axis)
        for other in range(rel.rank(whole)):
            if dynamic and other == axis:
                continue
            like, at = (whole, other), (None if other != axis else offset)
            if view.is_const(piece):
                rel.weight(piece, other, "param", None, like=like, offset=at)
            else:
                rel.link(piece, other, *like, offset=at)
        offset += size if not dynamic else 0


@rule(
    "Shape",
    mapping="reads sizes: allowed when only the sizes of non-channel axes are used",
    freezes_when="the size of a channel axis is read",
)
def shape(rel, node, view):
    """Shape: the channel count must not flow into the computation."""
    x = node.input[0]
    used = _axes_read(node, view, rel.rank(x))
    for axis in range(rel.rank(x)):
        if axis in used:
            rel.freeze(x, axis, f"its size is read by {rel.label}")
        else:
            rel.touch(x, axis)


def _axes_read(node, view, rank: int) -> set[int]:
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    available = set(range(rank)[start:end])
    read: set[int] = set()
    for user in view.consumers.get(node.output[0], []):
        if (user.op_type == "Slice" and feeds_copies_only(view, user.output[0])) or copies_into(
            view, node.output[0], user
        ):
            continue  # sizes copied back into a Reshape of the same tensor (flatten(2))
        indices = view.value(user.input[1]) if user.op_type == "Gather" else None
        if indices is None or attr(user, "axis", 0) != 0:
            return available
        read |= {sorted(available)[int(i)] for i in indices.reshape(-1)}
    return read
