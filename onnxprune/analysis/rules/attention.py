"""Channel rules for the attention blocks of transformers (ViT, BERT) as torch exporters emit them.

Multi-head attention reaches ONNX as plain ops::

    x ─MatMul+Add (q, k, v or one fused qkv)─▶ Reshape [N, T, (3,) H, D] ─Transpose─▶ [N, H, T, D]
      ─MatMul(q, kᵀ)─Div─Softmax─MatMul(·, v)─Transpose─▶ [N, T, H, D] ─Reshape─▶ [N, T, C] ─MatMul─▶

Two rules make one head one channel:

* **head split** (`link_head_split`, called by the Reshape rule): a Reshape that splits the last
  axis C into [..., H, D] ties index h of the H axis to the block of D features
  ``h*D .. h*D + D - 1`` of C — at every offset of the outer axes (the 3 of a fused q/k/v
  projection), so a head owns its q, k and v columns. D and the outer axes are frozen: only whole
  heads go. The merge back [N, T, H, D] -> [N, T, C] is the ordinary Reshape block link.
* **activation MatMul** (`batched_matmul`): q·kᵀ and softmax·v multiply two activations; their
  batch axes (the heads) are coupled, as is the contracted axis of both operands.

Everything between (Div/Mul by a scalar, Softmax over the keys, Transpose) already passes the
head axis through, so the q/k/v projections' output columns, the out projection's input rows and
the head axes of every attention tensor form one group whose channels are heads. Pruning rewrites
H in the Reshape targets — a constant, or the constant piece of a `Concat` that builds the target
at run time from `Shape` (dynamic sequence length); a target entry computed at run time freezes.
"""

from __future__ import annotations

import itertools

import numpy as np

from onnxprune.analysis.rules.registry import rule
from onnxprune.model.nodes import attr, node_label


def link_head_split(rel, x: str, in_axis: int, y: str, out_axes: list[int]) -> bool:
    """Link a split of `x`'s last axis C into `y`'s axes [..., H, D] (the last ones) head by head;
    return False (nothing done) when the split is not of that form."""
    x_shape, y_shape = rel.view.shape(x), rel.view.shape(y)
    real = [a for a in out_axes if y_shape[a] != 1]
    if in_axis != len(x_shape) - 1 or out_axes[-1] != len(y_shape) - 1 or len(real) < 2:
        return False
    if not all(isinstance(y_shape[a], int) for a in real):
        return False
    head_axis, depth = real[-2], y_shape[real[-1]]
    outer = real[:-2]
    reason = (
        f"{rel.label} splits channels into {[y_shape[a] for a in real]}: only whole heads (axis {head_axis}) are pruned"
    )
    for axis in outer + [real[-1]]:
        rel.freeze(y, axis, reason)
    for axis in out_axes:
        if y_shape[axis] == 1:
            rel.touch(y, axis)
    strides = [int(np.prod([y_shape[b] for b in real[k + 1 :]], dtype=np.int64)) for k in range(len(outer))]
    for index in itertools.product(*[range(y_shape[a]) for a in outer]):
        offset = sum(i * s for i, s in zip(index, strides))
        rel.link(y, head_axis, x, in_axis, offset=offset, block=depth)
    return True


def batched_matmul(rel, node, view) -> None:
    """MatMul of two activations ([..., M, K] x [..., K, N]): batch axes broadcast and are coupled
    (the heads of q·kᵀ and softmax·v); M and N pass to the output; the two K axes are coupled."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    ranks = rel.rank(a), rel.rank(b), rel.rank(y)
    if min(ranks) < 2:
        return rel.freeze_node("MatMul of a 1-D activation")
    for name, rank in ((a, ranks[0]), (b, ranks[1])):
        for axis in range(rank - 2):
            out_axis = ranks[2] - rank + axis
            if rel.size(name, axis) == 1:
                rel.touch(name, axis)
            else:
                rel.link(name, axis, y, out_axis)
    rel.link(a, -2, y, -2)
    rel.link(b, -1, y, -1)
    rel.link(a, -1, b, -2)


def rewrite_shape_target(node, ctx) -> None:
    """A Reshape/Expand target (input 1, constant or a computed `Concat`): every positive constant
    entry of a pruned output axis becomes that axis's new size (Expand's target aligns right)."""
    target, out = ctx.const(node.input[1]), node.output[0]
    if target is None:
        return rewrite_computed_target(node, ctx)
    flat, offset = target.reshape(-1), len(ctx.shape(out)) - target.size
    new = np.array(
        [
            ctx.new_size(out, offset + k) if v > 0 and ctx.kept(out, offset + k) is not None else v
            for k, v in enumerate(flat)
        ],
        dtype=target.dtype,
    ).reshape(target.shape)
    if not np.array_equal(new, target):
        ctx.set_input(node, 1, new)


def rewrite_computed_target(node, ctx) -> None:
    """Rewrite the constant pieces of a Reshape/Expand target built by `Concat` (dynamic shapes):
    each positive constant entry becomes the output axis's new size."""
    producers = {out: n for n in ctx.model.graph.node for out in n.output}
    concat = target_concat(producers, node.input[1], through_where=node.op_type == "Expand")
    length = (ctx.shape(node.input[1]) or (None,))[0]
    if concat is None or not isinstance(length, int):
        return
    position = len(ctx.shape(node.output[0])) - length
    for index, piece in enumerate(list(concat.input)):
        value = ctx.const(piece)
        size = value.size if value is not None else (ctx.shape(piece) or (None,))[0]
        if not isinstance(size, int):
            return  # the analysis froze every axis of such a target (`_target_entries`)
        if value is not None:
            flat = value.reshape(-1)
            new = np.array(
                [ctx.new_size(node.output[0], position + k) if v > 0 else v for k, v in enumerate(flat)],
                dtype=value.dtype,
            ).reshape(value.shape)
            if not np.array_equal(new, value):
                ctx.set_input(concat, index, new)
        position += size


def target_concat(producers: dict, name: str, through_where: bool = False):
    """The `Concat` that builds a computed Reshape target `name`, seen through `Cast`s (tf2onnx
    builds int32 shapes and casts them to int64), 1-D `Reshape`/`Identity` and, `through_where`
    (for rewriting Expand targets), TorchScript's ``Where(Equal(t, -1), ones, t)`` of `expand(-1, ...)`:
    only `t` is computed, and the constant branch is taken where t is -1, which a rewrite to
    positive sizes never touches. None when something else computes it."""
    node = producers.get(name)
    passes = ("Cast", "Reshape", "Identity", "Where") if through_where else ("Cast", "Reshape", "Identity")
    while node is not None and node.op_type in passes:
        if node.op_type == "Where":
            computed = [i for i in node.input[1:] if i in producers and producers[i].op_type != "Constant"]
            if len(computed) != 1:
                return None
            node = producers.get(computed[0])
        else:
            node = producers.get(node.input[0])
    return node if node is not None and node.op_type == "Concat" else None


@rule(
    "Attention",
    opsets="23-24",
    mapping="4-D q/k/v [N, H, T, D]: the head axis passes through q, k, v and the output (one head = one channel)",
    freezes_when="3-D inputs (heads packed "
    "in the last axis), grouped-query attention (fewer k/v heads), attention masks over heads, "
    "extra outputs",
)
def attention(rel, node, view):
    """ONNX Attention (opset 23) with 4-D inputs: heads are independent, so axis 1 is shared."""
    q, k, v = node.input[:3]
    y = node.output[0]
    extra = [o for o in node.output[1:] if o] + [i for i in node.input[3:] if i]
    if rel.rank(q) != 4 or extra or not (rel.size(q, 1) == rel.size(k, 1) == rel.size(v, 1)):
        return rel.freeze_node("Attention with packed heads, grouped k/v heads or a mask")
    for name in (q, k, v):
        rel.link(name, 0, y, 0)
        rel.link(name, 1, y, 1)
    reason = f"the softmax scale of {rel.label} depends on the head size"
    for name in (q, k):
        rel.freeze(name, 3, reason)
    rel.link(k, 2, v, 2)
    rel.link(q, 2, y, 2)
    rel.link(v, 3, y, 3)


def contrib_attention_reason(node) -> str | None:
    """Why a com.microsoft attention op freezes its heads (None for other ops)."""
    if node.domain == "com.microsoft" and node.op_type in (
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
    ):
        return (
            f"{node.op_type} '{node_label(node)}' (com.microsoft) packs its heads into fused "
            f"weights and a num_heads attribute ({attr(node, 'num_heads')} heads); prune the "
            "model before ORT's transformer optimizer fuses attention"
        )
    return None
