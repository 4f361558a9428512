"""Multiply-accumulates of the layer ops from their tensors' shapes, registered with their rules
(`@rule(..., macs=...)`). Dynamic dimensions count as 1; a shape a count needs but that is unknown
makes it 0."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.rules.registry import ShapeFn
from onnxprune.model.nodes import attr


def numel(shape) -> int:
    """Elements of a shape, dynamic dimensions (not ints) counted as 1."""
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))


def _known(shape: ShapeFn, *names: str):
    """The shapes of `names`, or None when one is unknown (or empty)."""
    shapes = [shape(name) for name in names]
    return None if any(not s for s in shapes) else shapes


def conv_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """Conv/ConvInteger: weight elements [C_out, C_in / group, k...] × output positions."""
    known = _known(shape, node.input[1], node.output[0])
    return numel(known[0]) * numel(known[1][2:]) if known else 0


def conv_transpose_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """ConvTranspose: weight elements [C_in, C_out / group, k...] × input positions."""
    known = _known(shape, node.input[1], node.output[0], node.input[0])
    return numel(known[0]) * numel(known[2][2:]) if known else 0


def _product_macs(shape: ShapeFn, a: str, y: str, transposed: bool) -> int:
    """Output elements × the contracted size (A's last axis, its first when transposed)."""
    known = _known(shape, a, y)
    if not known:
        return 0
    k = known[0][0] if transposed else known[0][-1]
    return numel(known[1]) * (k if isinstance(k, int) else 1)


def gemm_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """Gemm: output elements × K (A's axis 1, axis 0 with transA)."""
    return _product_macs(shape, node.input[0], node.output[0], bool(attr(node, "transA", 0)))


def matmul_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """MatMul/MatMulInteger (batched too): output elements × K (A's last axis)."""
    return _product_macs(shape, node.input[0], node.output[0], False)


def _steps(node: onnx.NodeProto, shape: ShapeFn) -> int | None:
    """Sequence length × batch of a recurrent layer (X's first two axes in both layouts)."""
    x = shape(node.input[0])
    return numel(x[:2]) if x and len(x) == 3 else None


def recurrent_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """LSTM/GRU/RNN: per step and batch row, every gate of every direction reads the input (W
    [D, gates·H, I]) and the hidden state (R [D, gates·H, H])."""
    steps = _steps(node, shape)
    known = _known(shape, node.input[1], node.input[2]) if len(node.input) > 2 else None
    return steps * (numel(known[0]) + numel(known[1])) if steps is not None and known else 0


def recurrent_unscaled_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """The recurrent product (R) of LSTM/GRU/RNN: the hidden size is not pruned, so these MACs
    do not scale with the kept share of the input weight W."""
    steps = _steps(node, shape)
    known = _known(shape, node.input[1], node.input[2]) if len(node.input) > 2 else None
    return steps * numel(known[1]) if steps is not None and known else 0
