"""Multiply-accumulate (MAC) and parameter counts. Shapes come from the view (dynamic dimensions
count as 1) or, better, from `shapes`: every tensor's shape inferred with the graph inputs fixed
to the verification shape at batch 1 (`verify_shapes.macs_shapes`). Each layer op's count is its
rule's `macs` (`analysis/rules/macs.py`)."""

from __future__ import annotations

import onnx

from onnxprune.analysis import ChannelGroup, ModelView
from onnxprune.analysis.layers import layer_layout
from onnxprune.analysis.rules.macs import numel
from onnxprune.analysis.rules.registry import ShapeFn, rule_for
from onnxprune.model.nbits import packed_weights
from onnxprune.model.nodes import node_label


def _shape_fn(view: ModelView, shapes: dict[str, tuple] | None) -> ShapeFn:
    """A tensor's shape from `shapes` where given, else the view's."""
    return lambda name: (shapes or {}).get(name) or view.shape(name)


def node_macs(node: onnx.NodeProto, view: ModelView, shapes: dict[str, tuple] | None = None) -> int:
    """MACs of one node (the layers: convolutions, matrix products, integer and recurrent layers;
    other ops count 0): shapes from `shapes` where given, else the view's (dynamic dims as 1)."""
    rule = rule_for(node)  # custom domains: unknown cost
    if rule is None or rule.macs is None or len(node.input) < 2:
        return 0
    return rule.macs(node, _shape_fn(view, shapes))


def unscaled_macs(node: onnx.NodeProto, view: ModelView, shapes: dict[str, tuple] | None = None) -> int:
    """The part of `node_macs` that does not scale with the kept share of the layer's weight
    (`layer_weight`): an LSTM/GRU/RNN's recurrent product; 0 for every other op."""
    layout = layer_layout(node)
    if layout is None or layout.unscaled_macs is None or len(node.input) < 2:
        return 0
    return layout.unscaled_macs(node, _shape_fn(view, shapes))


def model_macs(view: ModelView, shapes: dict[str, tuple] | None = None) -> dict[str, int]:
    """MACs per node label (`shapes`: see `node_macs`)."""
    return {node_label(n): node_macs(n, view, shapes) for n in view.graph.node}


def model_params(model: onnx.ModelProto) -> int:
    """Number of elements in all floating-point initializers, and the K x N values of each packed
    MatMulNBits weight."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    floats = sum(numel(init.dims) for init in model.graph.initializer if init.data_type in float_types)
    return floats + sum(packed_weights(model.graph).values())


def group_macs(group: ChannelGroup, macs: dict[str, int]) -> int:
    """MACs of the layers that produce or consume the group's channels."""
    nodes = {m.node for m in group.members if m.role in ("out", "in")}
    return sum(macs.get(n, 0) for n in nodes)
