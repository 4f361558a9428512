"""Time a channel group's layers at candidate channel counts: each timed layer (an op whose rule's
weight layout says `timed`: Conv, ConvTranspose, Gemm, MatMul) with a float weight that produces or
consumes the group's channels becomes a single-op ONNX model at its real input shape (the other
groups at the plan's counts), with the group's axes resized to the candidate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis import ChannelGroup, ModelView
from onnxprune.analysis.layers import layer_layout
from onnxprune.analysis.relations import Space
from onnxprune.bench.cache import TimingCache
from onnxprune.bench.latency import (
    interleaved_calls,
    io_binding_runner,
    make_session,
    plain_runner,
)
from onnxprune.bench.providers import ExecutionProvider, check_session_provider
from onnxprune.model.nodes import attr, node_label


@dataclass
class LayerInput:
    """One input of a layer: its shape at the plan's counts, dtype, whether it is a weight, and the
    atoms per group channel of each axis that belongs to the group (those axes scale with the count)."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    const: bool
    scaled: dict[int, int]


@dataclass
class LayerSpec:
    """A layer of a group as a template for single-op models at any channel count of the group."""

    node: onnx.NodeProto
    inputs: list[LayerInput]
    opset: int

    @property
    def label(self) -> str:
        """The node's name."""
        return node_label(self.node)

    def shapes(self, count: int) -> list[tuple[int, ...]]:
        """Input shapes with the group's axes at `count` channels."""
        return [tuple(count * i.scaled[a] if a in i.scaled else d for a, d in enumerate(i.shape)) for i in self.inputs]

    def group_attribute(self, count: int) -> int | None:
        """A grouped convolution's `group` attribute at `count` (scaled with its input channels), else None."""
        group, layout = attr(self.node, "group", 1), layer_layout(self.node)
        if layout is None or not layout.grouped or group == 1:
            return None
        before, after = self.inputs[0].shape[1], self.shapes(count)[0][1]
        return group * after // before

    def signature(self, count: int, threads: int, runtime: str) -> dict:
        """What the timing depends on: op, attributes, input shapes and dtypes, threads, runtime version."""
        attrs = {a.name: _attribute_value(a) for a in self.node.attribute}
        if self.group_attribute(count) is not None:
            attrs["group"] = self.group_attribute(count)
        return {
            "op": self.node.op_type,
            "opset": self.opset,
            "attributes": attrs,
            "threads": threads,
            "runtime": runtime,
            "inputs": [[list(s), i.dtype, i.const] for s, i in zip(self.shapes(count), self.inputs)],
        }

    def model(self, count: int, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The single-op model at `count` channels and random feeds for its activation inputs."""
        rng = np.random.default_rng(seed)
        node = onnx.NodeProto()
        node.CopyFrom(self.node)
        del node.output[1:]
        group = self.group_attribute(count)
        if group is not None:
            next(a for a in node.attribute if a.name == "group").i = group
        inputs, inits, feeds = [], [], {}
        for spec, shape in zip(self.inputs, self.shapes(count)):
            value = (rng.standard_normal(shape) * 0.1).astype(helper.tensor_dtype_to_np_dtype(spec.dtype))
            if spec.const:
                inits.append(numpy_helper.from_array(value, spec.name))
            else:
                inputs.append(helper.make_tensor_value_info(spec.name, spec.dtype, list(shape)))
                feeds[spec.name] = value
        output = helper.make_tensor_value_info(node.output[0], self.inputs[0].dtype, None)
        graph = helper.make_graph([node], "layer", inputs, [output], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 9)
        return model, feeds


def _attribute_value(attribute: onnx.AttributeProto):
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return str(value)  # tensors, graphs: their text


def uniform_atoms(group: ChannelGroup) -> dict:
    """Atoms per channel of every space of the group; empty when some space holds its channels
    unevenly (Pad/Concat offsets, pinned channels), where a channel count alone does not say the
    layer shapes."""
    atoms = {}
    for space, channel_of in group.channel_of.items():
        counts = np.bincount(channel_of, minlength=group.channels)
        if counts.min() != counts.max() or counts.min() == 0:
            return {}
        atoms[space] = int(counts[0])
    return {} if len(group.pinned) else atoms


def group_layers(group: ChannelGroup, pruned: ModelView, batch: int) -> list[LayerSpec]:
    """The group's timed layers (producers, consumers, depthwise convs) in the pruned model, at `batch`;
    layers with unknown shapes are left out."""
    atoms = uniform_atoms(group)
    labels = {m.node for m in group.members if m.role in ("out", "in")}
    specs = []
    for node in pruned.graph.node:
        layout = layer_layout(node)
        if layout is not None and layout.timed and node_label(node) in labels:
            spec = _layer_spec(node, pruned, atoms, batch)
            if spec is not None:
                specs.append(spec)
    return specs


def _layer_spec(node: onnx.NodeProto, view: ModelView, atoms: dict, batch: int) -> LayerSpec | None:
    weight = view.value(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return None
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    inputs = []
    for name in [n for n in node.input if n]:
        const = view.is_const(name)
        shape = view.shape(name) if not const else view.consts[name].shape
        if shape is None:
            return None
        shape = tuple(
            batch if axis == 0 and not const and not isinstance(d, int) else d for axis, d in enumerate(shape)
        )
        if any(not isinstance(d, int) for d in shape):
            return None
        scaled = {a: atoms[Space(name, a)] for a in range(len(shape)) if Space(name, a) in atoms}
        inputs.append(LayerInput(name, shape, dtype, const, scaled))
    return LayerSpec(node, inputs, view.opset)


class LayerTimer:
    """Median latency (ms) of single-op models on one execution provider, read from / written to a
    `TimingCache`. The candidates of one layer are timed side by side (interleaved blocks); on a GPU
    provider with IO binding, so that transfers are not timed."""

    def __init__(
        self,
        ep: ExecutionProvider,
        cache: TimingCache | None,
        threads: int = 0,
        warmup: int = 3,
        iters: int = 30,
        block: int = 5,
        refresh: bool = False,
    ):
        from onnxprune.model.runtime import onnxruntime

        self.ep, self.cache, self.threads = ep, cache, threads
        self.warmup, self.iters, self.block, self.refresh = warmup, iters, block, refresh
        self.runtime = onnxruntime().__version__
        self.timed = 0  # single-op models actually run (not from the cache)

    def layer_times(self, spec: LayerSpec, counts: list[int]) -> dict[int, float]:
        """Milliseconds of the layer at each count."""
        signatures = {c: spec.signature(c, self.threads, self.runtime) for c in counts}
        times = (
            {}
            if self.refresh or self.cache is None
            else {c: t for c in counts if (t := self.cache.get(signatures[c])) is not None}
        )
        missing = [c for c in counts if c not in times]
        if missing:
            for count, ms in zip(missing, self._measure(spec, missing)):
                times[count] = ms
                if self.cache is not None:
                    self.cache.put(signatures[count], ms)
        return times

    def _measure(self, spec: LayerSpec, counts: list[int]) -> list[float]:
        calls = []
        for count in counts:
            model, feeds = spec.model(count)
            session = make_session(model, self.threads, self.ep.providers)
            check_session_provider(session, self.ep)
            gpu = self.ep.device_type != "cpu"
            calls.append(
                io_binding_runner(session, feeds, self.ep.device_type) if gpu else plain_runner(session, feeds)
            )
        samples = interleaved_calls(calls, self.warmup, self.iters, self.block)
        self.timed += len(counts)
        return [float(np.median(s)) * 1000.0 for s in samples]

    def group_times(
        self, specs: list[LayerSpec], counts: list[int], progress: Callable[[], object] | None = None
    ) -> dict[int, float]:
        """Total milliseconds of the group's layers at each count."""
        total = {c: 0.0 for c in counts}
        for spec in specs:
            for count, ms in self.layer_times(spec, counts).items():
                total[count] += ms
            if progress is not None:
                progress()
        return total
