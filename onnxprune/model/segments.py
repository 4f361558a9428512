"""A big model's graph cut into consecutive segments of bounded weight size, each a model of its
own: running them one after the other (the tensors that cross a cut passed along) needs only one
segment's weights in memory at a time, which is how a model of several GB is verified within a
memory budget (see runtime.run_model)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.model.edit import copy_without_initializers
from onnxprune.model.tensors import tensor_nbytes

#: Models whose weights exceed this are run segment by segment (runtime.run_model).
SEGMENTED_BYTES = 256 << 20
#: The weights of one segment (a single node may hold more).
SEGMENT_BYTES = 64 << 20


@dataclass
class Segment:
    """Consecutive nodes, the tensors they read from earlier segments or the graph inputs
    (`inputs`), and those they produce for later segments or the graph outputs (`outputs`)."""

    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    #: tensors no later segment reads (dropped once this segment ran)
    last_use: list[str] = field(default_factory=list)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializers."""
    return sum(tensor_nbytes(init) for init in model.graph.initializer)


def plan_segments(model: onnx.ModelProto, limit: int | None = None) -> list[Segment] | None:
    """The graph's nodes (in their topological order) cut whenever a segment's weights would pass
    `limit` (default SEGMENT_BYTES); None when the graph cannot be cut so (a node with a subgraph, which may read any
    outer tensor, or a graph output that no node computes)."""
    limit = SEGMENT_BYTES if limit is None else limit
    graph = model.graph
    sizes = {init.name: tensor_nbytes(init) for init in graph.initializer}
    produced = {out for node in graph.node for out in node.output}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    if any(o.name not in produced for o in graph.output):
        return None
    chunks: list[list[onnx.NodeProto]] = [[]]
    held = 0
    for node in graph.node:
        size = sum(sizes.get(name, 0) for name in set(node.input))
        if chunks[-1] and held + size > limit:
            chunks.append([])
            held = 0
        chunks[-1].append(node)
        held += size
    return _link(chunks, sizes, {o.name for o in graph.output})


def _link(chunks: list[list[onnx.NodeProto]], weights: dict, graph_outputs: set[str]) -> list[Segment]:
    """The tensors that cross each cut."""
    last_reader: dict[str, int] = {}
    for index, nodes in enumerate(chunks):
        for node in nodes:
            for name in node.input:
                if name and name not in weights:
                    last_reader[name] = index
    segments = []
    for index, nodes in enumerate(chunks):
        made = {out for node in nodes for out in node.output if out}
        read = [n for node in nodes for n in node.input if n and n not in weights and n not in made]
        outputs = [n for n in made if n in graph_outputs or last_reader.get(n, -1) > index]
        segment = Segment(nodes, list(dict.fromkeys(read)), sorted(outputs))
        segment.last_use = [n for n in segment.inputs if last_reader.get(n) == index and n not in graph_outputs]
        segments.append(segment)
    return segments


def segment_model(model: onnx.ModelProto, segment: Segment, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The segment as a model: its inputs typed from their `values`, the initializers it reads."""
    sub = copy_without_initializers(model)
    graph = sub.graph
    for name in ("node", "input", "output"):
        graph.ClearField(name)
    graph.node.extend(segment.nodes)
    read = {n for node in segment.nodes for n in node.input}
    graph.initializer.extend(init for init in model.graph.initializer if init.name in read)
    declared = {o.name: o for o in model.graph.output}
    known = {v.name: v for v in model.graph.value_info}
    for name in segment.inputs:
        value = values[name]
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(value.shape)))
    for name in segment.outputs:
        graph.output.append(declared.get(name) or known.get(name) or onnx.ValueInfoProto(name=name))
    return sub
