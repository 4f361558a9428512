"""A tiny ONNX graph builder for rule tests: seeded random weights, NCHW activations."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Builds a small model node by node; every method returns the name of its output."""

    def __init__(self, shape=("N", 4, 8, 8), seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
        self.opset = opset
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, prefix: str = "w") -> str:
        """Add an initializer."""
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape) -> str:
        """A random float32 initializer."""
        return self.const(self.rng.standard_normal(shape).astype(np.float32))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str:
        """Add a node; returns its first output."""
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attrs))
        return names[0]

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True, **attrs) -> str:
        """A Conv with 'same' padding."""
        inputs = [x, self.weight(c_out, c_in // group, k, k)]
        if bias:
            inputs.append(self.weight(c_out))
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", *inputs, group=group, **attrs)

    def bn(self, x: str, c: int, scale=None) -> str:
        """A BatchNormalization with random statistics."""
        scale = self.rng.uniform(0.5, 1.5, c) if scale is None else np.asarray(scale)
        params = [scale, self.rng.standard_normal(c), self.rng.standard_normal(c), self.rng.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", x, *[self.const(p.astype(np.float32)) for p in params])

    def gemm_head(self, x: str, features: int, classes: int = 3) -> str:
        """Gemm(x, W^T) + b."""
        return self.op("Gemm", x, self.weight(classes, features), self.weight(classes), transB=1)

    def model(self, *outputs: str) -> onnx.ModelProto:
        """The finished model (shapes of outputs left for inference)."""
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "tiny", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


def conv_chain(middle, c: int = 6, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """x -> Conv(4->c) -> middle(builder, t) -> Conv(c->3) -> GlobalAveragePool; `middle` may add ops."""
    g = GraphBuilder(seed=seed, opset=opset)
    t = g.conv("x", 4, c)
    t = middle(g, t)
    y = g.op("GlobalAveragePool", g.conv(t, c, 3))
    return g.model(y)
