"""The stored format of ONNX Runtime's `MatMulNBits` (com.microsoft): a K x N weight quantized in
blocks of `block_size` input channels with `bits` bits per value.

* B: uint8 [N, n_blocks, blob_size], blob_size = block_size * bits / 8; the values of one block
  packed little end first (value 2i in the low nibble of byte i for 4 bits).
* scales: [N, n_blocks] (or flat [N * n_blocks]), of A's type.
* zero_points (optional): uint8 packed along the blocks like B ([N, ceil(n_blocks * bits / 8)]
  or flat), or unpacked of the scales' type; absent: 2^(bits-1).
* W[k, n] = (q[n, k // block_size, k % block_size] - zero_point[n, k // block_size]) * scale[n, k // block_size]

Pruning slices whole rows (output channels) and whole blocks (input channels): B and the scales
are sliced as they are stored; packed zero points are unpacked, sliced and packed again.
"""

from __future__ import annotations

import numpy as np
import onnx

#: bit widths whose values never straddle a byte
PACKABLE_BITS = (1, 2, 4, 8)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` values along the last axis of uint8 `packed` (8 / bits values a byte,
    low bits first)."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values (each below 2^bits) packed along the last axis, the last byte padded with 0."""
    per_byte = 8 // bits
    pad = -values.shape[-1] % per_byte
    padded = np.concatenate([values, np.zeros((*values.shape[:-1], pad), dtype=np.uint8)], axis=-1)
    grouped = padded.reshape(*values.shape[:-1], -1, per_byte).astype(np.uint8)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def block_zero_points(zero_points: np.ndarray | None, bits: int, n: int, n_blocks: int) -> np.ndarray:
    """Zero points as [N, n_blocks] (float for float zero points, else the unpacked integers)."""
    if zero_points is None:
        return np.full((n, n_blocks), 1 << (bits - 1), dtype=np.uint8)
    if zero_points.dtype != np.uint8:
        return np.asarray(zero_points).reshape(n, n_blocks)
    return unpack(np.asarray(zero_points).reshape(n, -1), bits, n_blocks)


def dequantize(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """The float32 weight as [N, n_blocks, block_size] (the transposed K x N matrix, its blocks
    split; padding past K included)."""
    n, n_blocks, blob = b.shape
    q = unpack(b, bits, blob * 8 // bits).astype(np.float32)
    zero = block_zero_points(zero_points, bits, n, n_blocks).astype(np.float32)
    scale = np.asarray(scales, dtype=np.float32).reshape(n, n_blocks)
    return (q - zero[..., None]) * scale[..., None]


def slice_zero_points(zero_points: np.ndarray, bits: int, n_blocks: int, rows: np.ndarray, blocks: np.ndarray):
    """Packed uint8 zero points [N, bytes] of the kept `rows` and `blocks`, packed again as
    [N', ceil(n_blocks' * bits / 8)]."""
    values = unpack(np.asarray(zero_points), bits, n_blocks)
    return pack(values[np.ix_(rows, blocks)], bits)


def input_norms(weight: np.ndarray) -> np.ndarray:
    """L1 norm over the output channels of each input channel of a dequantized weight
    [N, n_blocks, block_size] (`dequantize`): [n_blocks * block_size]."""
    return np.abs(np.asarray(weight, dtype=np.float64)).sum(axis=0).reshape(-1)


def packed_weights(graph: onnx.GraphProto) -> dict[str, int]:
    """The packed weights (B) of a graph's MatMulNBits nodes, each with the K x N elements it
    stands for (the parameters it counts as)."""
    found = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and len(node.input) > 1:
            sizes = {a.name: a.i for a in node.attribute if a.name in ("K", "N")}
            found[node.input[1]] = sizes.get("K", 0) * sizes.get("N", 0)
    return found
