"""Per-sample gates: the gated model of `measure.gated`, but with one gate row per sample.

`GatedModel` feeds one gate vector per call, shared by the whole batch. Here the gate of a probed
space is a graph input of shape [N, 1, .., size, .., 1] (the space's channel axis holds the
gates, the batch axis one row per sample): the effect criteria stack several gated variants of a
batch along the batch axis (one ONNX Runtime call evaluates k channel removals x batch, see
`criteria.stacked`), and autograd takes d loss_n / d gate[n, c] per sample in one backward pass
(`criteria.autograd`). A sample's row only reaches that sample when the gated tensors carry the
batch on axis 0, which `batch_axis_ready` checks from the inferred shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis import ChannelGroup, Space
from onnxprune.measure.gated import GatedModel, find_probes
from onnxprune.model.nodes import graph_sources, node_label, topological_order
from onnxprune.model.view import ModelView


def batch_dim(view: ModelView):
    """The batch dimension of the model's first input (a symbol, an int, or None when unknown)."""
    consts = {t.name for t in view.graph.initializer}
    first = next((i.name for i in view.graph.input if i.name not in consts), None)
    dims = view.shapes.get(first) if first is not None else None
    return dims[0] if dims else None


def batch_axis_ready(view: ModelView, names, symbolic: bool = True) -> str | None:
    """Why the tensors `names` do not all carry the model's batch on axis 0 (None when they do):
    their inferred dim 0 must be the first input's (a symbol when `symbolic`: batches of another
    size are then accepted, which stacking needs; a fixed dim 0 means a fixed batch)."""
    batch = batch_dim(view)
    if batch is None or (symbolic and not isinstance(batch, str)):
        return f"the model's batch dimension is {batch!r}, not a symbol"
    for name in names:
        dims = view.shapes.get(name)
        if not dims or dims[0] != batch:
            return f"tensor {name} has shape {dims}, not batch {batch!r} on axis 0"
    return None


@dataclass
class SampleGatedModel:
    """The model with per-sample gates on the probed spaces of some groups (`spaces`, each with its
    group in `space_group`); `model` is the gated ONNX model (graph inputs `GatedModel.gate_name`)."""

    model: onnx.ModelProto
    spaces: list[Space]
    space_group: dict[Space, str]
    ranks: dict[Space, int]

    def gate_shape(self, space: Space, rows: int, size: int) -> tuple[int, ...]:
        """The shape of `space`'s gate input for `rows` samples of a space of `size` atoms."""
        shape = [1] * self.ranks[space]
        shape[0], shape[space.axis] = rows, size
        return tuple(shape)

    def gate_feeds(self, groups: dict[str, ChannelGroup], rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Gate inputs from per-sample channel gates {group id: [rows, channels]} (every group of
        `space_group` must be given)."""
        feeds = {}
        for space in self.spaces:
            group = groups[self.space_group[space]]
            values = rows[group.id][:, group.channel_of[space]].astype(np.float32)
            feeds[GatedModel.gate_name(space)] = values.reshape(self.gate_shape(space, *values.shape))
        return feeds


def sample_gated_model(
    model: onnx.ModelProto, groups: list[ChannelGroup], view: ModelView, batch, only: set | None = None
) -> SampleGatedModel | None:
    """A copy of `model` with a per-sample gate before every probe of the prunable `groups` (those
    of the spaces `only` when given; `batch`: the gate inputs' dim 0); None when a probed space
    does not carry the batch on axis 0."""
    probes = [p for p in find_probes(groups, view) if only is None or p.space in only]
    spaces = list(dict.fromkeys(p.space for p in probes))
    if not spaces or batch_axis_ready(view, [s.tensor for s in spaces], symbolic=False) is not None:
        return None
    if any(s.axis == 0 for s in spaces):
        return None
    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    graph = gated.graph
    ranks = {s: len(view.shapes[s.tensor]) for s in spaces}
    renamed = {}
    for space in spaces:
        size = view.shapes[space.tensor][space.axis]
        shape: list = [1] * ranks[space]
        shape[0], shape[space.axis] = batch, size
        gate, renamed[space] = GatedModel.gate_name(space), f"{space.tensor}::sample_gated{space.axis}"
        graph.input.append(helper.make_tensor_value_info(gate, onnx.TensorProto.FLOAT, shape))
        graph.node.append(helper.make_node("Mul", [space.tensor, gate], [renamed[space]]))
    consumers = {node_label(n): n for n in graph.node}
    for probe in probes:
        node = consumers[probe.weight.node]
        for index, name in enumerate(node.input):
            if name == probe.space.tensor:
                node.input[index] = renamed[probe.space]
    ordered = topological_order(list(graph.node), graph_sources(graph))
    del graph.node[:]
    graph.node.extend(ordered)
    return SampleGatedModel(gated, spaces, {p.space: p.group for p in probes}, ranks)


def channel_rows(group: ChannelGroup, rows: int) -> np.ndarray:
    """Per-sample channel gates of one group, all 1: [rows, channels]."""
    return np.ones((rows, group.channels), np.float32)
