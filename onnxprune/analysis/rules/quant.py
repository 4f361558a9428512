"""Channel rules for quantization on activations (QDQ models): QuantizeLinear and
DequantizeLinear pass every axis through; a per-axis scale and zero point follow their axis.

Weight DequantizeLinear nodes (constant int8 values) are folded by normalization and put back,
sliced, by `passes/slice_chains.py`; what remains are the Q/DQ pairs on activations.
"""

from __future__ import annotations

from onnxprune.analysis.rules.registry import rule
from onnxprune.model.nodes import attr


@rule(
    "QuantizeLinear",
    "DequantizeLinear",
    mapping="every axis passes through; a per-axis scale/zero point follows its axis",
    freezes_when="blocked quantization (block_size); scale or zero point computed at run time",
)
def quantize(rel, node, view):
    """(De)quantization: y = f(x; scale, zero point) element-wise, per tensor or per axis."""
    x, y = node.input[0], node.output[0]
    params = [name for name in node.input[1:3] if name]
    if attr(node, "block_size", 0) or not all(view.is_const(name) for name in params):
        return rel.freeze_node("blocked or run-time quantization parameters")
    rel.identity(x, y)
    rank = rel.rank(x) or 1
    axis = attr(node, "axis", 1) % rank
    for name in params:
        shape = view.shape(name) or ()
        if len(shape) == 1 and shape[0] != 1:
            rel.weight(name, 0, "stat", None, like=(y, axis))  # untouched in the masked reference
        elif shape:
            for k in range(len(shape)):
                rel.touch(name, k)
