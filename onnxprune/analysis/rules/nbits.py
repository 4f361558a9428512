"""The channel rule of ONNX Runtime's `MatMulNBits` (com.microsoft): y = A · W (+ bias) with W
[K, N] stored block-quantized, transposed and packed (`model/nbits.py`).

Output channels (N) are whole rows of B, the scales, the zero points and the bias. Input channels
(K) are pruned in whole blocks of `block_size`: one index of B's and the scales' block axis is a
block of A's last axis, so the channel group of the input holds one channel per block and keeps
whole blocks only. The masked reference zeroes the scales of pruned rows and blocks: their
dequantized weights are then exactly 0, whatever the stored values and zero points.

Input channels are frozen (the reason says why) when they cannot be kept in whole blocks: K not a
multiple of `block_size` (the last block is padded) or a `g_idx` (act-order: channels assigned to
blocks out of order). Scales or zero points stored flat (an older format) freeze the node.
Criteria score the dequantized weight.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analysis.rules.macs import matmul_macs
from onnxprune.analysis.rules.registry import WeightLayout, rule
from onnxprune.model import nbits
from onnxprune.model.nodes import attr


def _inputs(node) -> dict[str, str]:
    """The node's named inputs: a, b, scales, zero_points, g_idx, bias (absent ones empty)."""
    names = ("a", "b", "scales", "zero_points", "g_idx", "bias")
    return {key: node.input[i] if len(node.input) > i else "" for i, key in enumerate(names)}


def _unsupported(node, view, inputs: dict[str, str]) -> str | None:
    """Why the node's channels cannot be mapped at all, or None."""
    bits, block = attr(node, "bits", 4), attr(node, "block_size", 0)
    if bits not in nbits.PACKABLE_BITS or block < 16 or block * bits % 8:
        return f"MatMulNBits with {bits} bits in blocks of {block} (values straddle bytes)"
    consts = [inputs[k] for k in ("b", "scales", "zero_points", "g_idx", "bias") if inputs[k]]
    if not all(view.is_const(name) for name in consts) or view.is_const(inputs["a"]):
        return "MatMulNBits with a weight, scale or zero point computed at run time"
    flat = [name for name in (inputs["scales"], inputs["zero_points"]) if name and len(view.shape(name) or ()) != 2]
    if flat or len(view.shape(inputs["b"]) or ()) != 3:
        return f"MatMulNBits stores '{(flat or [inputs['b']])[0]}' flat (an older format): its rows are not sliced"
    if (view.shape(inputs["b"]) or (0,))[0] != attr(node, "N", 0) or (view.shape(inputs["a"]) or ())[-1:] != (
        attr(node, "K", 0),
    ):
        return "MatMulNBits whose K/N attributes disagree with its tensors"
    return None


def input_blocks_frozen(node, view, inputs: dict[str, str]) -> str | None:
    """Why the input channels (K) cannot be pruned in whole blocks, or None."""
    k, block = attr(node, "K", 0), attr(node, "block_size", 0)
    if k % block:
        return (
            f"K={k} is not a multiple of block_size={block}: the last block of MatMulNBits is padded, "
            "so its input channels cannot be kept in whole blocks"
        )
    if inputs["g_idx"]:
        return "MatMulNBits with g_idx (act-order) assigns input channels to blocks out of order"
    return None


@rule(
    "MatMulNBits",
    domain="com.microsoft",
    opsets="com.microsoft 1",
    mapping="N = output channels (rows of B, scales, zero points, bias); K = input channels (A's last axis) "
    "in whole blocks of block_size (B's and the scales' axis 1); leading axes of A pass through",
    freezes_when="a weight, scale or zero point computed at run time; bits that straddle bytes; K "
    "(only) when K is not a multiple of block_size or with g_idx; flat scales/zero points",
    rewrite=lambda node, ctx: rewrite_nbits(node, ctx),
    macs=matmul_macs,
    layout=WeightLayout(out_axis=0, in_axis=1),
)
def matmul_nbits(rel, node, view):
    """MatMulNBits(A, B, scales, zero_points, g_idx, bias) with attributes K, N, bits, block_size."""
    inputs = _inputs(node)
    a, b, y = inputs["a"], inputs["b"], node.output[0]
    problem = _unsupported(node, view, inputs)
    if problem:
        return rel.freeze_node(problem)
    stored = [inputs[k] for k in ("b", "scales", "zero_points", "g_idx", "bias") if inputs[k]]
    for name in stored:
        for axis in range(rel.rank(name) or 0):
            rel.touch(name, axis)
    for axis in range(rel.rank(a) - 1):
        rel.link(a, axis, y, axis)
    bits = attr(node, "bits", 4)
    rel.weight(b, 0, "out", None, like=(y, -1))
    rel.weight(inputs["scales"], 0, "param", 0.0, like=(y, -1))  # the masked reference: scale 0
    if inputs["zero_points"]:
        rel.weight(inputs["zero_points"], 0, "param", None, like=(y, -1))
    if inputs["bias"]:
        rel.weight(inputs["bias"], 0, "param", 0.0, like=(y, -1))
    frozen = input_blocks_frozen(node, view, inputs)
    if frozen:
        rel.freeze(a, -1, frozen)
    else:
        block = attr(node, "block_size", 0)
        rel.weight(b, 1, "in", None, like=(a, -1), block=block)
        rel.weight(inputs["scales"], 1, "param", 0.0, like=(a, -1), block=block)
        if inputs["zero_points"] and view.value(inputs["zero_points"]).dtype != np.uint8:
            rel.weight(inputs["zero_points"], 1, "param", None, like=(a, -1), block=block)
    zero = inputs["zero_points"]
    rel.view.decoded[b] = lambda: nbits.dequantize(
        view.value(b), view.value(inputs["scales"]), view.value(zero) if zero else None, bits
    )


def rewrite_nbits(node, ctx) -> None:
    """K and N follow the kept channels; packed zero points lose their pruned blocks (unpacked,
    sliced, packed again: the plan marks them not an exact slice)."""
    inputs = _inputs(node)
    a, b, y = inputs["a"], inputs["b"], node.output[0]
    ctx.set_attr(node, "K", ctx.new_size(a, len(ctx.shape(a)) - 1))
    ctx.set_attr(node, "N", ctx.new_size(y, len(ctx.shape(y)) - 1))
    zero, blocks = inputs["zero_points"], ctx.kept(b, 1)
    value = ctx.const(zero) if zero else None
    if value is None or value.dtype != np.uint8 or blocks is None:
        return
    rows = ctx.kept(zero, 0)
    rows = np.arange(value.shape[0]) if rows is None else rows
    bits, n_blocks = attr(node, "bits", 4), ctx.shape(b)[1]
    ctx.set_input(node, 3, nbits.slice_zero_points(value, bits, n_blocks, rows, blocks))
    if node.input[3] == zero:  # not a copy of a shared tensor
        packed = {"axis": 1, "bits": bits, "values": n_blocks, "kept": blocks.tolist()}
        ctx.restate(zero, {"exact": False, "packed": packed})
