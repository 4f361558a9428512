"""Channel rules for ONNX Runtime's dynamic quantization (`quantize_dynamic`): activations are
quantized at run time by `DynamicQuantizeLinear`, layers are `ConvInteger`/`MatMulInteger` with
stored int8/uint8 weights, and the float bias is quantized at run time by a scalar scale.

Pruning is exact although the activation's scale is computed over the whole tensor: the range of
`DynamicQuantizeLinear` always includes 0 (x_min = min(0, min x), x_max = max(0, max x)), so a
channel masked to 0 changes neither the scale nor the zero point, and 0 quantizes to the zero
point exactly, which the layer subtracts: a masked input channel contributes nothing. A pruned
filter is masked to the weight's zero point (0 with a per-channel zero point, which is masked too).
"""

from __future__ import annotations

from onnxprune.analysis.rules.macs import conv_macs, matmul_macs
from onnxprune.analysis.rules.ops import link_groups, rewrite_group
from onnxprune.analysis.rules.registry import WeightLayout, rule
from onnxprune.model.nodes import attr


@rule(
    "DynamicQuantizeLinear",
    mapping="every axis passes through (the range always includes 0, "
    "so masked channels leave the scale and zero point unchanged)",
    freezes_when="never",
)
def dynamic_quantize(rel, node, view):
    """y = saturate(round(x / scale) + zero_point), scale and zero point scalars."""
    rel.identity(node.input[0], node.output[0])


def _zero_point_fill(rel, node, view, index: int, weight_axis: int, like: tuple) -> float | None:
    """The neutral value of a stored integer weight: its scalar zero point (0 when absent); for a
    per-channel zero point 0, and the zero point becomes a member masked to 0 too. None when the
    zero point is computed at run time."""
    name = node.input[index] if len(node.input) > index else ""
    if not name:
        return 0.0
    value = view.value(name)
    if value is None:
        return None
    if value.size == 1:
        for axis in range(rel.rank(name) or 0):
            rel.touch(name, axis)
        return float(value.reshape(-1)[0])
    rel.weight(name, 0, "param", 0.0, like=like)
    return 0.0


def _touch_scalars(rel, node, indices: tuple[int, ...]) -> bool:
    """Mark the per-tensor zero points of the activation as handled; False when one is per-axis."""
    for index in indices:
        name = node.input[index] if len(node.input) > index else ""
        if name and any(d != 1 for d in (rel.view.shape(name) or ())):
            return False
        for axis in range(rel.rank(name) or 0) if name else ():
            rel.touch(name, axis)
    return True


@rule(
    "ConvInteger",
    mapping="as Conv: weight axis 0 = output channels (a per-channel weight zero "
    "point follows them), axis 1 = input channels; depthwise and grouped as for Conv",
    freezes_when="weight or its zero point not constant; a per-axis input zero point",
    rewrite=rewrite_group,
    macs=conv_macs,
    layout=WeightLayout(out_axis=0, in_axis=1, grouped=True, kernel=True),
)
def conv_integer(rel, node, view):
    """ConvInteger(x, w, x_zero_point, w_zero_point): an integer convolution with int32 output."""
    x, w, y = node.input[0], node.input[1], node.output[0]
    fill = _zero_point_fill(rel, node, view, 3, 0, (y, 1)) if view.is_const(w) else None
    if fill is None or not _touch_scalars(rel, node, (2,)):
        return rel.freeze_node("ConvInteger with a computed weight or per-axis input zero point")
    rel.link(x, 0, y, 0)
    rel.weight(w, 0, "out", fill, like=(y, 1))
    if attr(node, "group", 1) == 1:
        rel.weight(w, 1, "in", fill, like=(x, 1))
    else:
        rel.touch(w, 1)
        link_groups(rel, node, x, y)


@rule(
    "MatMulInteger",
    mapping="constant 2-D B: as MatMul (K = input features, N = output features; a per-column B zero point follows N)",
    freezes_when="B or its zero point not constant or not 2-D; a per-row A zero point",
    macs=matmul_macs,
    layout=WeightLayout(out_axis=1, in_axis=0, matrix=True),
)
def matmul_integer(rel, node, view):
    """MatMulInteger(a, b, a_zero_point, b_zero_point) with a stored integer weight b."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    ok = view.is_const(b) and not view.is_const(a) and rel.rank(b) == 2 and (rel.rank(a) or 0) >= 2
    fill = _zero_point_fill(rel, node, view, 3, 1, (y, -1)) if ok else None
    if fill is None or not _touch_scalars(rel, node, (2,)):
        return rel.freeze_node("MatMulInteger without a constant 2-D weight and per-tensor A zero point")
    for axis in range(rel.rank(a) - 1):
        rel.link(a, axis, y, axis)
    rel.weight(b, 0, "in", fill, like=(a, -1))
    rel.weight(b, 1, "out", fill, like=(y, -1))
