"""Node helpers every stage uses: attribute values, readable labels, the one topological sort."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

import onnx
from onnx import helper


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or `default`."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def node_label(node: onnx.NodeProto) -> str:
    """A readable name for a node: its name, else its op type and first output."""
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def graph_sources(graph: onnx.GraphProto) -> set[str]:
    """The tensors a graph's nodes may read without a writer: its inputs and initializers."""
    return {i.name for i in graph.input} | {t.name for t in graph.initializer}


def topological_order(nodes: Sequence[onnx.NodeProto], available: Iterable[str]) -> list[onnx.NodeProto]:
    """`nodes` ordered so that each comes after the nodes writing its inputs (otherwise in their
    given order); `available`: the tensors no node writes (graph inputs, initializers). ValueError
    naming the tensors that are neither available nor written, or when the nodes form a cycle."""
    known = set(available) | {""}
    writers = {name for node in nodes for name in node.output if name}
    waiting = [0] * len(nodes)
    readers: dict[str, list[int]] = defaultdict(list)
    missing = set()
    for index, node in enumerate(nodes):
        for name in set(node.input):
            if name in known:
                continue
            if name not in writers:
                missing.add(name)
                continue
            readers[name].append(index)
            waiting[index] += 1
    if missing:
        raise ValueError(f"undefined inputs: {sorted(missing)[:5]}")
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        index = ready.popleft()
        order.append(nodes[index])
        for name in nodes[index].output:
            for reader in readers.pop(name, ()):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    ready.append(reader)
    if len(order) < len(nodes):
        raise ValueError("the nodes form a cycle")
    return order
