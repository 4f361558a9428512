"""Multiply-accumulate (MAC) and parameter counts. Shapes come from the view (dynamic dimensions
count as 1) or, better, from `shapes`: every tensor's shape inferred with the graph inputs fixed
to the verification shape at batch 1 (`verify_shapes.macs_shapes`)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis import ChannelGroup, ModelView
from onnxprune.model.nodes import node_label


def _numel(shape) -> int:
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))


def node_macs(node: onnx.NodeProto, view: ModelView, shapes: dict[str, tuple] | None = None) -> int:
    """MACs of one node (convolutions and matrix products; other ops count 0): shapes from
    `shapes` where given, else the view's (dynamic dims as 1)."""
    def shape(name: str):
        return (shapes or {}).get(name) or view.shape(name)

    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:  # custom ops: unknown cost
        return 0
    if node.op_type in ("Conv", "ConvTranspose") and shape(node.input[1]) and shape(node.output[0]):
        w, y, x = shape(node.input[1]), shape(node.output[0]), shape(node.input[0])
        spatial = y[2:] if node.op_type == "Conv" else x[2:]
        return _numel(w) * _numel(spatial)
    if node.op_type in ("Gemm", "MatMul") and shape(node.input[0]) and shape(node.output[0]):
        a = shape(node.input[0])
        transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
        k = a[0] if transposed else a[-1]
        return _numel(shape(node.output[0])) * (k if isinstance(k, int) else 1)
    return 0


def model_macs(view: ModelView, shapes: dict[str, tuple] | None = None) -> dict[str, int]:
    """MACs per node label (`shapes`: see `node_macs`)."""
    return {node_label(n): node_macs(n, view, shapes) for n in view.graph.node}


def model_params(model: onnx.ModelProto) -> int:
    """Number of elements in all floating-point initializers."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16}
    return sum(_numel(init.dims) for init in model.graph.initializer if init.data_type in float_types)


def group_macs(group: ChannelGroup, macs: dict[str, int]) -> int:
    """MACs of the layers that produce or consume the group's channels."""
    nodes = {m.node for m in group.members if m.role in ("out", "in")}
    return sum(macs.get(n, 0) for n in nodes)
