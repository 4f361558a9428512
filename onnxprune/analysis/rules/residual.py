"""Channel rules for a transformer's residual stream: embeddings (Gather from a table), the class
token (Expand), token selection (Gather of one position), and — with `--prune-residual` — the
LayerNormalization over the stream.

A LayerNorm's statistics mix every channel of the normalized axis, so by default that axis is
frozen. With `ModelView.prune_normalized` a LayerNorm over the last axis only passes it through,
its scale and bias become members, and the whole residual stream (every LayerNorm, the
projections that write to it and read from it, the embeddings) is one group. The pruned model
then normalizes over the kept channels only: verification compares it with a reference whose
LayerNorms do the same (`passes.masked_norm`), not with the plain masked model.
"""

from __future__ import annotations

from onnxprune.analysis.rules.attention import rewrite_shape_target
from onnxprune.analysis.rules.registry import rule
from onnxprune.analysis.rules.shape_entries import shape_entries
from onnxprune.model.nodes import attr


def normalized_channels(rel, node, view) -> bool:
    """LayerNorm over the last axis with constant 1-D scale/bias: the axis passes through and
    scale/bias follow it. Returns False (nothing done) for any other LayerNorm."""
    x, y = node.input[0], node.output[0]
    rank = rel.rank(x)
    params = [n for n in node.input[1:3] if n]
    if attr(node, "axis", -1) % rank != rank - 1 or any(not view.is_const(n) or rel.rank(n) != 1 for n in params):
        return False
    if len([o for o in node.output if o]) > 1:
        return False
    rel.identity(x, y)
    rel.weight(params[0], 0, "bn_scale", 0.0, like=(y, rank - 1))
    if len(params) > 1:
        rel.weight(params[1], 0, "param", 0.0, like=(y, rank - 1))
    return True


@rule(
    "Gather",
    mapping="a constant table gathered by token ids (an embedding): the table's "
    "feature axis = the output's last axis (a producer); an activation indexed by constant "
    "indices: the other axes pass through",
    freezes_when="the gathered axis; both operands activations or both constants",
)
def gather(rel, node, view):
    """Gather: embedding lookup, or selecting positions (the class token) of an activation."""
    data, indices, y = node.input[0], node.input[1], node.output[0]
    axis = attr(node, "axis", 0) % rel.rank(data)
    if view.is_const(data) == view.is_const(indices):
        return rel.freeze_node("Gather without exactly one constant operand")
    index_rank = rel.rank(indices)
    for a in range(rel.rank(data)):
        out = a if a < axis else a + index_rank - 1
        if a == axis:
            rel.freeze(data, a, f"indexed by {rel.label}")
        elif view.is_const(data):
            rel.weight(data, a, "out", 0.0, like=(y, out))
        else:
            rel.link(data, a, y, out)
    for a in range(index_rank):
        rel.touch(indices, a)
        rel.touch(y, axis + a)


@rule(
    "Expand",
    mapping="axes kept at their size (target entry 1) pass through; a constant input "
    "(a class token) is a member; an entry equal to the input's size passes through (rewritten)",
    freezes_when="the target entry of an expanded channel axis is computed at run time",
    rewrite=lambda node, ctx: rewrite_shape_target(node, ctx),
)
def expand(rel, node, view):
    """Expand (broadcast): an axis whose target entry is the constant 1 keeps the input's size."""
    x, y = node.input[0], node.output[0]
    rank_x, rank_y = rel.rank(x), rel.rank(y)
    target = shape_entries(view, node.input[1]) or [None] * rank_x
    for a in range(rank_x):
        out = rank_y - rank_x + a
        entry = target[len(target) - rank_x + a] if len(target) >= rank_x - a else 1
        if rel.size(x, a) == 1:
            rel.touch(x, a)
        elif entry is None or entry > 1 and entry != rel.size(x, a):
            reason = f"the target shape of {rel.label} is computed at run time"
            rel.freeze(x, a, reason)
            rel.freeze(y, out, reason)
        elif view.is_const(x):
            rel.weight(x, a, "param", 0.0, like=(y, out))
        else:
            rel.link(x, a, y, out)
