"""Effect criteria with many gated variants per ONNX Runtime call.

An effect criterion (kl, head_mask, finite-difference taylor) runs the model once per channel
with that channel's gate changed. Two things make those runs cheaper here, with the same scores:

* **stacking**: the model gets per-sample gates (`criteria.sample_gates`) and one call evaluates
  k variants x batch, the batch repeated k times along the batch axis and block j gated for
  variant j;
* **a suffix per group**: only the nodes that depend on the group's gates are re-run (the
  *suffix*); what they read from before the gates (*cut* tensors) comes from one run of the
  unpruned model per batch, which also gives the reference output.

`StackedGroup.build` says why a group cannot be scored this way (a tensor the suffix reads
does not carry a symbolic batch on axis 0 — a graph with a fixed batch, a Reshape with a
constant batch —, a subgraph, the output not depending on the gates); the caller then scores
that group one channel per call (`EffectCriterion.per_channel_scores`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis import ChannelGroup
from onnxprune.criteria.sample_gates import SampleGatedModel, batch_axis_ready, batch_dim, sample_gated_model
from onnxprune.measure.gated import GatedModel
from onnxprune.model.edit import copy_without_initializers
from onnxprune.model.runtime import make_session
from onnxprune.model.view import ModelView

#: at most this many rows (variants x batch) per call, and this many elements in one stacked tensor
STACK_ROWS = 512
STACK_ELEMENTS = 1 << 25

#: (reference output, gated outputs (one per gate value), labels) -> per-sample effect
Effect = Callable[[np.ndarray, list[np.ndarray], object], np.ndarray]


@dataclass
class Suffix:
    """The nodes to re-run for a group's variants, the cut tensors they read from the prefix, and
    the graph inputs they read (fed repeated, like the cut tensors)."""

    nodes: list[onnx.NodeProto]
    cuts: list[str]
    fed: list[str]


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node holds a subgraph (If, Loop, Scan): their outer-scope reads are not tracked."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    )


def suffix_of(graph: onnx.GraphProto, gates: set[str], output: str, batched: Callable[[str], bool]) -> Suffix | str:
    """The suffix of the gated `graph` (topologically sorted) for the gate inputs `gates`, or why
    there is none. A tensor the suffix reads that does not carry the batch on axis 0 (a shape
    computed before the gates) is recomputed: its producer joins the suffix."""
    inits = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - inits
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    dependent, chosen = set(gates), set()
    for index, node in enumerate(graph.node):
        if any(name in dependent for name in node.input):
            chosen.add(index)
            dependent.update(node.output)
    if output not in dependent:
        return f"the output {output} does not depend on the gates"
    while True:
        produced = {name for index in chosen for name in graph.node[index].output}
        reads = dict.fromkeys(
            name
            for index in sorted(chosen)
            for name in graph.node[index].input
            if name and name not in produced and name not in inits and name not in gates
        )
        pulled = {producer[name] for name in reads if name not in inputs and not batched(name)}
        if not pulled:
            break
        chosen |= pulled
    unbatched = [name for name in reads if name in inputs and not batched(name)]
    if unbatched:
        return f"graph input {unbatched[0]} does not carry a symbolic batch on axis 0"
    nodes = [graph.node[index] for index in sorted(chosen)]
    return Suffix(nodes, [n for n in reads if n not in inputs], [n for n in reads if n in inputs])


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every typed tensor of the main graph."""
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def prefix_model(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The model returning `outputs` (its first output, then the cut tensors), typed."""
    types = element_types(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = {o.name: o for o in copy.graph.output}
    infos = [
        kept.get(n) or helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None) for n in outputs
    ]
    del copy.graph.output[:]
    copy.graph.output.extend(infos)
    return copy


def suffix_model(gated: onnx.ModelProto, suffix: Suffix, output: str) -> onnx.ModelProto:
    """The suffix as a model: inputs the cut tensors, the graph inputs it reads and its gates."""
    types = element_types(gated)
    sub = copy_without_initializers(gated)
    graph = sub.graph
    read = {name for node in suffix.nodes for name in node.input}
    originals = {i.name: i for i in gated.graph.input}
    inputs = [helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None) for n in suffix.cuts]
    inputs += [originals[n] for n in suffix.fed]
    inputs += [i for n, i in originals.items() if n.startswith("gate::") and n in read]
    outputs = [o for o in gated.graph.output if o.name == output]
    for field, values in ((graph.node, suffix.nodes), (graph.input, inputs), (graph.output, outputs)):
        del field[:]
        field.extend(values)
    del graph.value_info[:]
    graph.initializer.extend(t for t in gated.graph.initializer if t.name in read)
    return sub


def channel_classes(group: ChannelGroup, spaces: list) -> list[tuple[frozenset, list[int]]]:
    """The group's channels by the set of probed spaces holding them (a residual stream whose later
    channels only exist in later stages gets a shorter suffix for those)."""
    classes: dict[frozenset, list[int]] = {}
    holders = [(space, set(group.channel_of[space].tolist())) for space in spaces]
    for channel in range(group.channels):
        key = frozenset(space for space, held in holders if channel in held)
        classes.setdefault(key, []).append(channel)
    return list(classes.items())


@dataclass
class Part:
    """The channels of a group that share their gated spaces, with their suffix and its session."""

    channels: list[int]
    gated: SampleGatedModel
    suffix: Suffix
    session: Any = None


class StackedGroup:
    """One group's prefix session (the unpruned model returning its first output and the cut
    tensors) and, per class of channels, a suffix session (the nodes their gates reach, per-sample
    gates): `batch_sums` scores its channels on one batch, `variants_per_call` variants a call."""

    def __init__(self, group: ChannelGroup, parts: list[Part], model: onnx.ModelProto, view: ModelView):
        self.group, self.parts = group, parts
        self.output = model.graph.output[0].name
        self.cuts = list(dict.fromkeys(name for part in parts for name in part.suffix.cuts))
        self.prefix = make_session(prefix_model(model, [self.output, *self.cuts]), view.consts, optimize=True)
        for part in parts:
            part.session = make_session(suffix_model(part.gated.model, part.suffix, self.output), view.consts, True)
        self.variants_per_call = 1

    @classmethod
    def build(cls, model: onnx.ModelProto, view: ModelView, group: ChannelGroup) -> StackedGroup | str:
        """The stacked scorer of `group`, or why it cannot be stacked."""
        if has_subgraphs(model.graph):
            return "the graph has subgraphs (If/Loop/Scan)"
        output = model.graph.output[0].name
        why = batch_axis_ready(view, [output])
        if why is not None:
            return why
        everything = sample_gated_model(model, [group], view, batch_dim(view))
        if everything is None:
            return "a probe of the group does not carry a symbolic batch on axis 0"
        parts = []
        for spaces, channels in channel_classes(group, everything.spaces):
            gated = sample_gated_model(model, [group], view, batch_dim(view), set(spaces))
            assert gated is not None, "a subset of the spaces of a gated model"
            gates = {GatedModel.gate_name(s) for s in gated.spaces}
            suffix = suffix_of(gated.model.graph, gates, output, lambda name: batch_axis_ready(view, [name]) is None)
            if isinstance(suffix, str):
                return suffix
            parts.append(Part(channels, gated, suffix))
        return cls(group, parts, model, view)

    def plan_calls(self, rows: int, cuts: list[np.ndarray], values: int) -> int:
        """Channels per call for a batch of `rows` samples whose cut tensors are `cuts` (every
        channel needs `values` variants: one per gate value)."""
        per_sample = max([c.size // max(rows, 1) for c in cuts] + [1])
        variants = max(1, min(STACK_ROWS // max(rows, 1), STACK_ELEMENTS // (rows * per_sample)))
        return max(1, variants // values)

    def batch_sums(self, feeds: dict, labels, effect: Effect, gate_values: tuple[float, ...]) -> np.ndarray:
        """Sum over the batch of the effect of gating each channel of the group."""
        reference, *cut_values = self.prefix.run(None, feeds)
        rows = reference.shape[0]
        per_call = self.plan_calls(rows, cut_values, len(gate_values))
        self.variants_per_call = per_call * len(gate_values)
        available = {**dict(zip(self.cuts, cut_values)), **feeds}
        sums = np.zeros(self.group.channels)
        for part in self.parts:
            cuts = {name: available[name] for name in part.suffix.cuts + part.suffix.fed}
            for start in range(0, len(part.channels), per_call):
                channels = part.channels[start : start + per_call]
                variants = [(c, v) for c in channels for v in gate_values]
                outputs = self.run_variants(part, cuts, rows, variants)
                for index, channel in enumerate(channels):
                    gated = outputs[index * len(gate_values) : (index + 1) * len(gate_values)]
                    sums[channel] += effect(reference, gated, labels).sum()
        return sums

    def run_variants(self, part: Part, cuts: dict, rows: int, variants: list[tuple[int, float]]) -> list[np.ndarray]:
        """The first output of each variant (channel, gate value), evaluated in one call."""
        k = len(variants)
        gates = np.ones((k * rows, self.group.channels), np.float32)
        for j, (channel, value) in enumerate(variants):
            gates[j * rows : (j + 1) * rows, channel] = value
        feeds = {name: np.concatenate([value] * k, axis=0) if k > 1 else value for name, value in cuts.items()}
        feeds.update(part.gated.gate_feeds({self.group.id: self.group}, {self.group.id: gates}))
        (stacked,) = part.session.run([self.output], feeds)
        if stacked.shape[0] != k * rows:
            raise ValueError(f"the suffix returned {stacked.shape[0]} rows for {k} variants x {rows} samples")
        return [stacked[j * rows : (j + 1) * rows] for j in range(k)]
