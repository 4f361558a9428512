"""Layers: the ops whose rule has a weight layout (`WeightLayout`), read from the op-rule registry
so that cost, timing, reconstruction and allocation share one definition of what a layer is."""

from __future__ import annotations

import onnx

from onnxprune.analysis.rules.registry import WeightLayout, rule_for
from onnxprune.model.view import ModelView


def layer_layout(node: onnx.NodeProto) -> WeightLayout | None:
    """The weight layout of `node`'s op, or None when the op is not a layer."""
    rule = rule_for(node)
    return rule.layout if rule is not None else None


def is_layer(node: onnx.NodeProto) -> bool:
    """True for a layer op (Conv, ConvTranspose, Gemm, MatMul, ConvInteger, MatMulInteger, LSTM,
    GRU, RNN, com.microsoft MatMulNBits: every op whose rule has a weight layout), whatever its inputs."""
    return layer_layout(node) is not None


def layer_weight(node: onnx.NodeProto, view: ModelView) -> str | None:
    """The constant weight tensor a layer's MACs scale with, or None: not a layer, the weight is
    computed at run time (attention's q·kᵀ), or not of the layout's rank (a MatMul by a 1-D or
    3-D constant)."""
    layout = layer_layout(node)
    if layout is None or len(node.input) <= layout.weight or not node.input[layout.weight]:
        return None
    name = node.input[layout.weight]
    value = view.value(name)
    if value is None or value.ndim < 2 or (layout.matrix and value.ndim != 2):
        return None
    return name


def weight_axes(node: onnx.NodeProto, view: ModelView) -> tuple[int, int] | None:
    """(input-channel axis, output-channel axis) of a layer's constant weight, or None (see
    `layer_weight`)."""
    layout = layer_layout(node)
    if layout is None or layer_weight(node, view) is None:
        return None
    return layout.axes(node)
