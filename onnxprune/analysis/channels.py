"""Collect every node's channel relations and join them into a networkx graph of channel spaces."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import onnx

from onnxprune.analysis.relations import Link, Relations, Space, WeightUse, tensors_of
from onnxprune.analysis.rules.attention import contrib_attention_reason
from onnxprune.analysis.rules.kv_cache import kv_cache_spaces, not_a_cache_hint
from onnxprune.analysis.rules.registry import rule_for
from onnxprune.model.nodes import attr, node_label
from onnxprune.model.subgraphs import has_subgraph, subgraph_outer_reads
from onnxprune.model.view import ModelView


@dataclass
class ChannelGraph:
    """All spaces, links, weight members and frozen reasons of a model."""

    graph: nx.Graph = field(default_factory=nx.Graph)
    weights: list[WeightUse] = field(default_factory=list)
    frozen: dict[Space, str] = field(default_factory=dict)
    pins: list[tuple[Space, int, int]] = field(default_factory=list)
    touching: dict[Space, list[str]] = field(default_factory=dict)
    rewrites: list[onnx.NodeProto] = field(default_factory=list)

    def add(self, rel: Relations) -> None:
        """Merge one node's relations."""
        spaces = [link.src for link in rel.links] + [link.dst for link in rel.links]
        spaces += [use.space for use in rel.weights] + list(rel.frozen)
        for space in spaces:
            self.graph.add_node(space, size=rel.size(space.tensor, space.axis))
        for link in rel.links:
            self.graph.add_edge(link.src, link.dst)
            self.graph.edges[link.src, link.dst].setdefault("links", []).append(link)
        self.weights.extend(rel.weights)
        for space, reason in rel.frozen.items():
            self.frozen.setdefault(space, reason)
        self.pins.extend(rel.pins)
        for space in {link.src for link in rel.links} | {link.dst for link in rel.links}:
            self.touching.setdefault(space, []).append(node_label(rel.node))

    def links_between(self, spaces) -> list[Link]:
        """Every link whose ends both lie in `spaces`."""
        return [link for _, _, links in self.graph.subgraph(spaces).edges(data="links") for link in links]


def build_channel_graph(view: ModelView) -> ChannelGraph:
    """Apply each node's rule; freeze what no rule maps, and what reaches graph inputs/outputs."""
    channels = ChannelGraph()
    readers = subgraph_readers(view)
    for node in view.graph.node:
        rel = Relations(view, node)
        relate_node(rel, node, view, readers)
        channels.add(rel)
        rule = rule_for(node)
        if rule is not None and rule.rewrite is not None:
            channels.rewrites.append(node)
    _freeze_subgraph_reads(channels, readers)
    _freeze_boundary(channels, view)
    _whole_quantization_blocks(channels, view)
    return channels


def _whole_quantization_blocks(channels: ChannelGraph, view: ModelView) -> None:
    """A weight folded from a blocked DequantizeLinear (int4 weights of a QDQ model) keeps whole
    blocks along the blocked axis, so that its stored values and scales are sliced, not the
    folded float weight: a virtual space of one index per block is linked to the axis."""
    chains = view.weight_chains
    for sink, chain in (chains.chains if chains else {}).items():
        dequantize = next((n for n in chain.nodes if n.op_type == "DequantizeLinear"), None)
        shape = view.shape(sink)
        if chains is None or dequantize is None or not shape or chains.shapes.get(dequantize.output[0]) != shape:
            continue
        block, axis = attr(dequantize, "block_size", 0), attr(dequantize, "axis", 1) % len(shape)
        if not block:
            continue
        space = Space(sink, axis)
        if space not in channels.graph or shape[axis] <= block:
            continue
        if shape[axis] % block:
            channels.frozen.setdefault(
                space,
                f"'{sink}' is quantized in blocks of {block} along axis {axis} of size {shape[axis]}: the last "
                "block is padded, so its channels cannot be kept in whole blocks",
            )
            continue
        blocks = Space(f"{sink}::blocks", 0)
        view.shapes[blocks.tensor] = (shape[axis] // block,)
        channels.graph.add_node(blocks, size=shape[axis] // block)
        channels.graph.add_edge(blocks, space, links=[Link(blocks, space, 0, block)])


def relate_node(rel: Relations, node: onnx.NodeProto, view: ModelView, readers: dict | None = None) -> None:
    """Run the node's rule (or freeze it) and freeze every axis the rule left unmentioned
    (`readers`: `subgraph_readers(view)`, computed here when not given)."""
    readers = subgraph_readers(view) if readers is None else readers
    rule = rule_for(node)
    unknown = [t for t in tensors_of(node) if view.shape(t) is None and not _unread_output(t, node, view, readers)]
    if has_subgraph(node):
        _freeze_control_flow(rel, node)
    elif rule is None:
        domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
        rel.freeze_node(contrib_attention_reason(node) or f"no channel rule for op {domain}{node.op_type}")
    elif unknown:
        rel.freeze_node(f"shape of '{unknown[0]}' is unknown")
    else:
        rule.relate(rel, node, view)
    for tensor in tensors_of(node):
        for axis in range(rel.rank(tensor) or 0):
            if (tensor, axis) not in rel.mentioned:
                rel.freeze(tensor, axis, f"axis {axis} of '{tensor}' is not mapped through {rel.label}")


def _unread_output(tensor: str, node: onnx.NodeProto, view: ModelView, readers: dict) -> bool:
    """True for an output of `node` that nothing reads (e.g. the mask of an opset-9 Dropout, whose
    shape inference may leave unknown): its shape does not matter."""
    return (
        tensor in node.output
        and tensor not in view.consumers
        and tensor not in view.graph_outputs
        and tensor not in readers
    )


def _freeze_control_flow(rel: Relations, node: onnx.NodeProto) -> None:
    """If/Loop/Scan: what their subgraphs compute is not analyzed (they are kept unchanged), so
    the node's inputs and outputs keep all their channels."""
    where = f"the subgraph of {node.op_type} '{node_label(node)}'"
    for tensor in tensors_of(node):
        reason = f"read inside {where}" if tensor in node.input else f"computed by {where}"
        for axis in range(rel.rank(tensor) or 0):
            rel.freeze(tensor, axis, reason)


def subgraph_readers(view: ModelView) -> dict[str, onnx.NodeProto]:
    """Main-graph tensors that a subgraph reads by name (without an explicit input), each with
    the first node whose subgraph reads it."""
    readers: dict[str, onnx.NodeProto] = {}
    for node in view.graph.node:
        if has_subgraph(node):
            for name in subgraph_outer_reads(node):
                readers.setdefault(name, node)
    return readers


def _freeze_subgraph_reads(channels: ChannelGraph, readers: dict[str, onnx.NodeProto]) -> None:
    """A tensor that a subgraph reads implicitly keeps every channel (activations and weights)."""
    if not readers:
        return
    for space in list(channels.graph.nodes):
        reader = readers.get(space.tensor)
        if reader is not None:
            channels.frozen.setdefault(space, f"read inside the subgraph of {reader.op_type} '{node_label(reader)}'")


def _freeze_boundary(channels: ChannelGraph, view: ModelView) -> None:
    """Graph inputs and outputs keep every channel, except the head axis of a KV cache's past
    input and present output (see rules/kv_cache.py): it is pruned with the heads."""
    caches = kv_cache_spaces(view)
    for space in list(channels.graph.nodes):
        if space in caches:
            continue
        if space.tensor in view.graph_inputs:
            hint = not_a_cache_hint(space.tensor)
            channels.frozen.setdefault(space, f"reaches graph input '{space.tensor}'{hint}")
        elif space.tensor in view.graph_outputs:
            hint = not_a_cache_hint(space.tensor)
            channels.frozen.setdefault(space, f"reaches graph output '{space.tensor}'{hint}")
