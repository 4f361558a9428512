"""Channel rules for the topologies beyond plain CNNs: Split, Resize/Upsample, normalizations,
Softmax and Einsum (Concat, Slice and grouped convolutions live with the CNN rules)."""

from __future__ import annotations

import numpy as np

from onnxprune.analysis.rules.ops import link_pieces
from onnxprune.analysis.rules.registry import rule
from onnxprune.analysis.rules.residual import normalized_channels
from onnxprune.model.nodes import attr


@rule(
    "Split",
    mapping="output k is the input's channels [offset_k, offset_k + C_k) on the split axis; other axes pass through",
    freezes_when="split sizes computed at run time",
    rewrite=lambda node, ctx: _rewrite_split(node, ctx),
)
def split(rel, node, view):
    """Split (e.g. torch.chunk in YOLOv8's C2f): each output is an offset range of the input."""
    x = node.input[0]
    link_pieces(rel, view, x, list(node.output), attr(node, "axis", 0) % rel.rank(x))


def _rewrite_split(node, ctx) -> None:
    axis = attr(node, "axis", 0) % len(ctx.shape(node.input[0]))
    old = [ctx.shape(out)[axis] for out in node.output]
    new = [ctx.new_size(out, axis) for out in node.output]
    if new == old:
        return
    if ctx.view.opset < 13:
        ctx.set_attr(node, "split", new)
        return
    ctx.remove_attr(node, "num_outputs")
    ctx.set_input(node, 1, np.array(new, dtype=np.int64))


@rule(
    "Resize",
    "Upsample",
    mapping="batch and channel axes pass through when their scale is 1 "
    "(or their size unchanged); spatial axes are resampled",
    freezes_when="the channel axis is resized; scales/sizes computed at run time",
    rewrite=lambda node, ctx: _rewrite_resize(node, ctx),
)
def resize(rel, node, view):
    """Resize/Upsample over spatial axes keeps channels."""
    x, y = node.input[0], node.output[0]
    for axis in range(rel.rank(x)):
        if rel.size(x, axis) == rel.size(y, axis) and _axis_unscaled(node, view, axis):
            rel.link(x, axis, y, axis)


def _resize_inputs(node) -> tuple[str, str]:
    """Names of the scales and sizes inputs ('' when absent)."""
    inputs = list(node.input) + [""] * 4
    if node.op_type == "Upsample" or len(node.input) == 2:
        return inputs[1], ""
    return inputs[2], inputs[3]


def _axis_unscaled(node, view, axis: int) -> bool:
    axes = attr(node, "axes")
    if axes is not None and axis not in [a % len(view.shape(node.input[0])) for a in axes]:
        return True
    position = axis if axes is None else [a % len(view.shape(node.input[0])) for a in axes].index(axis)
    scales, sizes = (view.value(n) if n else None for n in _resize_inputs(node))
    if scales is not None and scales.size:
        return float(scales.reshape(-1)[position]) == 1.0
    if sizes is not None and sizes.size:
        return int(sizes.reshape(-1)[position]) == view.shape(node.input[0])[axis]
    return attr(node, "scales") is not None and float(attr(node, "scales")[position]) == 1.0


def _rewrite_resize(node, ctx) -> None:
    _, sizes_name = _resize_inputs(node)
    sizes = ctx.const(sizes_name) if sizes_name else None
    if sizes is None or not sizes.size:
        return
    shape = ctx.shape(node.input[0])
    axes = attr(node, "axes")
    axes = [a % len(shape) for a in axes] if axes is not None else list(range(len(shape)))
    new = np.array(
        [ctx.new_size(node.input[0], a) if sizes[k] == shape[a] else sizes[k] for k, a in enumerate(axes)],
        dtype=sizes.dtype,
    )
    if not np.array_equal(new, sizes):
        ctx.set_input(node, 3, new)


@rule(
    "LayerNormalization",
    opsets="17-21",
    mapping="axes before `axis` pass through; normalized axes are "
    "frozen, or (--prune-residual) a last normalized axis passes through with scale/bias",
    freezes_when="the normalized axes (their statistics mix the channels), unless --prune-residual",
)
def layer_norm(rel, node, view):
    """LayerNormalization over axes [axis, rank): those channels cannot be pruned (unless the view
    allows it: `residual_rules.normalized_channels`)."""
    x, y = node.input[0], node.output[0]
    first = attr(node, "axis", -1) % rel.rank(x)
    if view.prune_normalized and normalized_channels(rel, node, view):
        return
    reason = f"normalized together by {rel.label}"
    if first == rel.rank(x) - 1 and not view.prune_normalized:
        reason += " (--prune-residual prunes it)"
    for axis in range(rel.rank(x)):
        if axis < first:
            rel.link(x, axis, y, axis)
        else:
            rel.freeze(x, axis, reason)
            rel.freeze(y, axis, reason)


rule(
    "RMSNormalization",
    opsets="23-24",
    mapping="as LayerNormalization: axes before `axis` pass through; the normalized axes are frozen, "
    "or (--prune-residual) a last normalized axis passes through with its scale",
    freezes_when="the normalized axes (their root mean square mixes the channels), unless --prune-residual",
)(layer_norm)


@rule(
    "LRN",
    mapping="batch and spatial axes pass through",
    freezes_when="the channel axis (each channel is divided by its neighbours' sum of squares)",
)
def local_response_norm(rel, node, view):
    """LRN (AlexNet/GoogLeNet era): normalizes over `size` neighbouring channels, so removing one
    changes its neighbours' values; the channel axis is frozen."""
    x, y = node.input[0], node.output[0]
    reason = f"normalized over neighbouring channels by {rel.label} (size {attr(node, 'size', '?')})"
    for axis in range(rel.rank(x)):
        if axis == 1:
            rel.freeze(x, axis, reason)
            rel.freeze(y, axis, reason)
        else:
            rel.link(x, axis, y, axis)


@rule(
    "InstanceNormalization",
    mapping="every axis passes through; scale/bias follow axis 1",
    freezes_when="scale/bias computed at run time",
)
def instance_norm(rel, node, view):
    """InstanceNormalization normalizes each channel on its own."""
    x, scale, bias = node.input[:3]
    y = node.output[0]
    if not (view.is_const(scale) and view.is_const(bias)):
        return rel.freeze_node("InstanceNormalization parameters computed at run time")
    rel.identity(x, y)
    rel.weight(scale, 0, "bn_scale", 0.0, like=(y, 1))
    rel.weight(bias, 0, "param", 0.0, like=(y, 1))


@rule(
    "GroupNormalization",
    mapping="whole groups of channels are pruned; scale/bias follow the channels (or the groups, opset 18)",
    opsets="18-21",
    freezes_when="parameters computed at run time",
    rewrite=lambda node, ctx: _rewrite_group_norm(node, ctx),
)
def group_norm(rel, node, view):
    """GroupNormalization: a group's channels share statistics, so groups are pruned whole."""
    x, scale, bias = node.input[:3]
    y = node.output[0]
    groups, channels = attr(node, "num_groups"), rel.size(x, 1)
    if not (view.is_const(scale) and view.is_const(bias)) or not isinstance(channels, int):
        return rel.freeze_node("GroupNormalization parameters computed at run time")
    rel.identity(x, y)
    space = rel.virtual("groups", groups)
    rel.link(space, 0, x, 1, block=channels // groups)
    like = (space, 0) if view.shape(scale)[0] == groups != channels else (y, 1)
    rel.weight(scale, 0, "bn_scale", 0.0, like=like)
    rel.weight(bias, 0, "param", 0.0, like=like)


def _rewrite_group_norm(node, ctx) -> None:
    groups, channels = attr(node, "num_groups"), ctx.shape(node.input[0])[1]
    new = groups * ctx.new_size(node.input[0], 1) // channels
    if new != groups:
        ctx.set_attr(node, "num_groups", new)


@rule(
    "Softmax",
    "LogSoftmax",
    "Hardmax",
    mapping="axes other than the normalized one pass through",
    freezes_when="the normalized axis (opset < 13: every axis from `axis` on)",
)
def softmax(rel, node, view):
    """Softmax over one axis; the others pass through."""
    x, y = node.input[0], node.output[0]
    rank = rel.rank(x)
    if view.opset >= 13:
        mixed = {attr(node, "axis", -1) % rank}
    else:
        mixed = set(range(attr(node, "axis", 1) % rank, rank))
    for axis in range(rank):
        if axis not in mixed:
            rel.link(x, axis, y, axis)


@rule(
    "Einsum",
    mapping="equal subscripts are the same channels; a constant operand is a weight "
    "(subscripts kept in the output: filters; contracted ones: consumer columns)",
    freezes_when="ellipsis or repeated subscripts in one operand",
)
def einsum(rel, node, view):
    """Einsum with an explicit equation, e.g. 'nchw,oc->nohw'."""
    terms = _einsum_terms(attr(node, "equation"), len(node.input))
    if terms is None:
        return rel.freeze_node("Einsum equation with '...' or repeated subscripts")
    operands, output = terms
    tensors = list(node.input) + [node.output[0]]
    anchor: dict[str, tuple[str, int]] = {}
    for name, term in zip(tensors, operands + [output]):
        if not view.is_const(name):
            for axis, letter in enumerate(term):
                anchor.setdefault(letter, (name, axis))
    for name, term in zip(tensors, operands + [output]):
        for axis, letter in enumerate(term):
            _einsum_link(rel, view, name, axis, anchor.get(letter), letter in output)


def _einsum_link(rel, view, name: str, axis: int, anchor, in_output: bool) -> None:
    if anchor is None or anchor == (name, axis):
        return
    if view.is_const(name):
        rel.weight(name, axis, "out" if in_output else "in", 0.0, like=anchor)
    else:
        rel.link(name, axis, *anchor)


def _einsum_terms(equation, count: int):
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    equation = equation.replace(" ", "")
    if "..." in equation:
        return None
    left, _, right = equation.partition("->")
    operands = left.split(",")
    if len(operands) != count or any(len(set(t)) != len(t) for t in operands):
        return None
    if not _:
        letters = "".join(operands)
        right = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return operands, right
