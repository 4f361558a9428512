"""A read-only view of a normalized model that analysis rules query: shapes, constants, users."""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

import numpy as np
import onnx
from onnx import helper

from ..graph import initializers, tensor_shapes


class ModelView:
    """Shapes, constant values and producer/consumer maps of a model's main graph."""

    def __init__(self, model: onnx.ModelProto, prune_normalized: bool = False):
        self.model = model
        #: LayerNormalization passes its normalized axis (a transformer's residual stream) so it can
        #: be pruned; the statistics then change, and verification normalizes over kept channels
        self.prune_normalized = prune_normalized
        self.graph = model.graph
        self.shapes = tensor_shapes(model)
        self.consts = initializers(model)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        """Nodes reading each tensor."""
        users = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    users[name].append(node)
        return users

    @cached_property
    def producer(self) -> dict[str, onnx.NodeProto]:
        """The node writing each tensor."""
        return {out: node for node in self.graph.node for out in node.output if out}

    @cached_property
    def graph_inputs(self) -> set[str]:
        """Names of graph inputs that are not initializers."""
        return {i.name for i in self.graph.input} - set(self.consts)

    @cached_property
    def graph_outputs(self) -> set[str]:
        """Names of graph outputs."""
        return {o.name for o in self.graph.output}

    def shape(self, name: str) -> tuple | None:
        """Static shape (None for dynamic dims), or None when unknown."""
        return self.shapes.get(name)

    def is_const(self, name: str) -> bool:
        """True when the tensor is an initializer (a weight or a folded constant)."""
        return name in self.consts

    def value(self, name: str) -> np.ndarray | None:
        """The constant's value, or None for activations."""
        return self.consts.get(name)


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or `default`."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def node_label(node: onnx.NodeProto) -> str:
    """A readable name for a node: its name, else its op type and first output."""
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"
