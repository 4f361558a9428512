"""A read-only view of a normalized model that analysis rules query: shapes, constants, users."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from functools import cached_property

import numpy as np
import onnx

from onnxprune.model.nbits import packed_weights
from onnxprune.model.shapes import tensor_shapes
from onnxprune.model.symbolic import refine_reshape_shapes
from onnxprune.model.tensors import WeightArrays, initializers
from onnxprune.model.weight_chains import CHAIN_OPS, ChainSet, evaluate_chain_outputs


class ModelView:
    """Shapes, constant values and producer/consumer maps of a model's main graph."""

    def __init__(self, model: onnx.ModelProto, prune_normalized: bool = False):
        self.model = model
        #: LayerNormalization passes its normalized axis (a transformer's residual stream) so it can
        #: be pruned; the statistics then change, and verification normalizes over kept channels
        self.prune_normalized = prune_normalized
        self.graph = model.graph
        self.shapes = tensor_shapes(model)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts = ChainValues(initializers(model), model.graph.node, self.opset)
        #: the input's weight chains (`model/weight_chains.py`) when this view is of a model that
        #: normalization folded them in: `apply_plan` puts them back, their stored tensors sliced
        self.weight_chains: ChainSet | None = None
        #: stored tensors whose values are not the weights they stand for (a packed block-quantized
        #: weight), with how to compute those float weights: criteria score them (see `weight_values`)
        self.decoded: dict[str, Callable[[], np.ndarray]] = {}
        refine_reshape_shapes(self)  # dims shape inference lost in a computed flatten target

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

    def param_count(self) -> int:
        """Elements of the weights: floating-point initializers, a weight chain (int8 → Cast →
        Mul by a scale, DequantizeLinear, fp16 → Cast) counted once, by the weight it yields, a
        packed MatMulNBits weight by its K x N values."""
        chains = self.consts
        read = chains.chain_inputs
        floats = sum(
            int(np.prod(self.shapes[n], dtype=np.int64))
            for n in chains.initializer_names
            if n not in read and chains.is_float(n)
        )
        packed = sum(packed_weights(self.graph).values())
        return floats + packed + sum(int(np.asarray(chains[n]).size) for n in chains.chain_sinks)

    def shape(self, name: str) -> tuple | None:
        """Static shape (None for dynamic dims), or None when unknown."""
        return self.shapes.get(name)

    def is_const(self, name: str) -> bool:
        """True when the tensor is an initializer (a weight or a folded constant) or the output of
        a weight chain over initializers (int8 → Cast → Mul, DequantizeLinear, fp16 → Cast)."""
        return name in self.consts

    def weight_values(self, name: str) -> np.ndarray:
        """The float weight a constant stands for: its value, or the dequantized weight of a packed
        one (`decoded`, with the stored axes first: MatMulNBits' [N, n_blocks, block_size])."""
        decode = self.decoded.get(name)
        return decode() if decode is not None else self.consts[name]

    def value(self, name: str) -> np.ndarray | None:
        """The constant's value (a weight chain's computed value), or None for activations."""
        return self.consts.get(name)


class ChainValues(Mapping[str, np.ndarray]):
    """A model's initializers by name, and the outputs of its weight chains (layout and precision
    ops over initializers, as a pruned model with stored precision holds them), computed when
    first read."""

    def __init__(self, inits: Mapping, nodes, opset: int):
        self._inits, self._opset = inits, opset
        self._nodes: dict[str, onnx.NodeProto] = {}
        self._values: dict[str, np.ndarray] = {}
        for node in nodes:
            known = [n for n in node.input if n]
            if (
                node.op_type in CHAIN_OPS
                and node.domain in ("", "ai.onnx")
                and len(node.output) == 1
                and known
                and all(n in inits or n in self._nodes for n in known)
            ):
                self._nodes[node.output[0]] = node

    @property
    def initializer_names(self) -> list[str]:
        """Names of the initializers (without the chain outputs)."""
        return list(self._inits)

    @cached_property
    def chain_inputs(self) -> set[str]:
        """Initializers that weight-chain nodes read."""
        return {n for node in self._nodes.values() for n in node.input if n in self._inits}

    @cached_property
    def chain_sinks(self) -> list[str]:
        """Chain outputs that no chain node reads (the weights the chains yield)."""
        read = {n for node in self._nodes.values() for n in node.input}
        return [n for n in self._nodes if n not in read]

    def is_float(self, name: str) -> bool:
        """True for an initializer of a floating-point type (its values are not read)."""
        dtype = self._inits.dtype(name) if isinstance(self._inits, WeightArrays) else np.asarray(self[name]).dtype
        return np.issubdtype(dtype, np.floating)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._inits:
            return self._inits[name]
        if name not in self._nodes:
            raise KeyError(name)
        if not self._values:  # every chain output at once: one ONNX Runtime session
            self._values = evaluate_chain_outputs(self._nodes, self._inits, list(self._nodes), self._opset)
        return self._values[name]

    def __contains__(self, name) -> bool:
        return name in self._inits or name in self._nodes

    def __iter__(self):
        yield from self._inits
        yield from self._nodes

    def __len__(self) -> int:
        return len(self._inits) + len(self._nodes)
