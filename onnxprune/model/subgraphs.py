"""Nodes that carry subgraphs (If/Loop/Scan): the outer tensors they read, and holding them out of
graph-surgeon's passes so they come back byte for byte."""

from __future__ import annotations

import onnx

#: Domain of the stand-ins for nodes with subgraphs while graph-surgeon works on the main graph.
HELD_DOMAIN = "onnxprune.held"


def has_subgraph(node: onnx.NodeProto) -> bool:
    """True for a node with a graph attribute (If, Loop, Scan, ...)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def subgraph_outer_reads(node: onnx.NodeProto) -> list[str]:
    """Names that the node's subgraphs (at any depth) read from the enclosing scopes: ONNX
    subgraphs see outer tensors by name, without declaring them as inputs."""
    reads: list[str] = []
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            reads.extend(_graph_outer_reads(graph))
    return list(dict.fromkeys(reads))


def _graph_outer_reads(graph: onnx.GraphProto) -> list[str]:
    defined = (
        {i.name for i in graph.input}
        | {i.name for i in graph.initializer}
        | {s.values.name for s in graph.sparse_initializer}
    )
    reads = []
    for node in graph.node:
        reads += [name for name in list(node.input) + subgraph_outer_reads(node) if name and name not in defined]
        defined.update(node.output)
    reads += [out.name for out in graph.output if out.name not in defined]
    return reads


def hold_subgraphs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Replace every main-graph node with subgraphs by a stand-in without attributes whose inputs
    are its own followed by the outer tensors its subgraphs read (so dead-node removal keeps them
    and sorting places the node after them), in domain `HELD_DOMAIN` (never folded). Returns the
    originals by stand-in name, for `restore_subgraphs`."""
    held = {}
    for index, node in enumerate(model.graph.node):
        if not has_subgraph(node):
            continue
        key = f"onnxprune_held_{index}"
        original = onnx.NodeProto()
        original.CopyFrom(node)
        held[key] = original
        outer = [name for name in subgraph_outer_reads(node) if name not in node.input]
        node.ClearField("attribute")
        node.op_type, node.domain, node.name = "Held", HELD_DOMAIN, key
        node.input.extend(outer)
    return held


def restore_subgraphs(model: onnx.ModelProto, held: dict[str, onnx.NodeProto]) -> None:
    """Put the original nodes (subgraphs byte for byte) back in place of their stand-ins."""
    for node in model.graph.node:
        if node.domain == HELD_DOMAIN and node.name in held:
            node.CopyFrom(held[node.name])


def keep_subgraphs(source: onnx.GraphProto, result: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node with subgraphs in `result` its original from `source` (shape inference
    writes value_info and shapes into subgraphs; normalization leaves them as they were)."""
    originals = {tuple(n.output): n for n in source.node if has_subgraph(n)}
    if not originals:
        return result
    for node in result.graph.node:
        original = originals.get(tuple(node.output))
        if original is not None:
            node.CopyFrom(original)
    return result
