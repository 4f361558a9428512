"""Activation-side views of a model, computed with ONNX Runtime on calibration data.

A *probe* is an activation that a consumer layer (Conv/Gemm/MatMul/Einsum) reads through a weight
member with the role "in": pruning a channel zeroes exactly its contribution there. `GatedModel`
puts a gate (a per-channel multiplier fed as a graph input) in front of every probe and can expose
the probed activations as extra outputs, on a copy: the user's model is never touched.
`collect_stats` streams calibration batches through it and keeps per-channel running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis import ChannelGroup, Space, WeightUse
from onnxprune.criteria.base import member_matrix
from onnxprune.model.nbits import input_norms
from onnxprune.model.nodes import graph_sources, node_label, topological_order
from onnxprune.model.runtime import make_session
from onnxprune.model.view import ModelView


@dataclass(frozen=True)
class Probe:
    """An activation space read by a consumer through its weight member `weight`."""

    group: str
    space: Space
    weight: WeightUse


def find_probes(groups: list[ChannelGroup], view: ModelView) -> list[Probe]:
    """Every consumer input of every prunable group."""
    probes = []
    for group in groups:
        if not group.prunable:
            continue
        for member in group.members_with("in"):
            partner = member.partner
            if partner is not None and not view.is_const(partner.tensor) and partner in group.channel_of:
                probes.append(Probe(group.id, partner, member))
    return probes


class GatedModel:
    """The model with gates before every probe (graph inputs `gate::<tensor>::<axis>`), optionally
    returning the probed activations too."""

    def __init__(
        self,
        model: onnx.ModelProto,
        groups: list[ChannelGroup],
        view: ModelView,
        observe: bool = False,
        threads: int = 0,
    ):
        self.groups = {g.id: g for g in groups}
        self.probes = find_probes(groups, view)
        self.spaces = list(dict.fromkeys(p.space for p in self.probes))
        self.observe = observe
        self.outputs = [o.name for o in model.graph.output]
        # graph optimizations on: gated runs are measurements, not the equivalence proof
        self.session = make_session(self._build(model, view), view.consts, optimize=True, threads=threads)
        self.space_group = {p.space: p.group for p in self.probes}

    @staticmethod
    def gate_name(space: Space) -> str:
        """Name of the graph input that gates `space`."""
        return f"gate::{space.tensor}::{space.axis}"

    def _build(self, model: onnx.ModelProto, view: ModelView) -> onnx.ModelProto:
        gated = onnx.ModelProto()
        gated.CopyFrom(model)
        graph = gated.graph
        consumers = {node_label(n): n for n in graph.node}
        renamed = {space: self._insert_gate(graph, space, view) for space in self.spaces}
        for probe in self.probes:
            node = consumers[probe.weight.node]
            for index, name in enumerate(node.input):
                if name == probe.space.tensor:
                    node.input[index] = renamed[probe.space]
        _topological_sort(graph)
        if self.observe:
            graph.output.extend(
                helper.make_tensor_value_info(s.tensor, onnx.TensorProto.FLOAT, None)
                for s in dict.fromkeys(p.space for p in self.probes)
                if s.tensor not in self.outputs
            )
        return gated

    def _insert_gate(self, graph: onnx.GraphProto, space: Space, view: ModelView) -> str:
        dims = view.shapes[space.tensor]  # a probe's shape is known (analysis found its channels)
        rank, size = len(dims), dims[space.axis]
        gate, gated = self.gate_name(space), f"{space.tensor}::gated{space.axis}"
        graph.input.append(helper.make_tensor_value_info(gate, onnx.TensorProto.FLOAT, [size]))
        shape = [1] * rank
        shape[space.axis] = size
        shape_name = f"{gate}::shape"
        graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), shape_name))
        graph.node.append(helper.make_node("Reshape", [gate, shape_name], [f"{gate}::b"]))
        graph.node.append(helper.make_node("Mul", [space.tensor, f"{gate}::b"], [gated]))
        return gated

    def gates(self, class_gates: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Gate inputs: 1 everywhere, or per channel of the groups in `class_gates`."""
        feeds = {}
        for space in self.spaces:
            group = self.groups[self.space_group[space]]
            values = (class_gates or {}).get(group.id)
            atoms = group.channel_of[space]
            feeds[self.gate_name(space)] = (
                np.ones(len(atoms), np.float32) if values is None else values[atoms].astype(np.float32)
            )
        return feeds

    def run(self, feeds: dict[str, np.ndarray], class_gates: dict[str, np.ndarray] | None = None) -> dict:
        """Outputs (and probed activations when observing) by name."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {**feeds, **self.gates(class_gates)})))


def keep_gate(channels: int, kept: np.ndarray) -> np.ndarray:
    """Class gate that keeps `kept` channels (1) and masks the others (0)."""
    gate = np.zeros(channels, np.float32)
    gate[kept] = 1.0
    return gate


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is produced before it is read (gates were appended)."""
    ordered = topological_order(list(graph.node), graph_sources(graph))
    del graph.node[:]
    graph.node.extend(ordered)


@dataclass
class SpaceStats:
    """Running per-atom statistics of one probed activation space."""

    size: int
    # per-atom sums, zeros of `size` to start
    elements: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    total_abs: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    rank_sum: np.ndarray = field(init=False)
    samples: int = 0
    sensitivity: dict = field(default_factory=dict)  # consumer node -> running max per atom

    def __post_init__(self) -> None:
        for name in ("elements", "total", "total_abs", "total_sq", "zeros", "rank_sum"):
            setattr(self, name, np.zeros(self.size))

    def update(self, activation: np.ndarray) -> np.ndarray:
        """Add a batch [N, C, ...] (channel axis already at 1); returns per-sample mean |a| [N, C]."""
        a = activation.astype(np.float64).reshape(activation.shape[0], self.size, -1)
        self.elements += a.shape[0] * a.shape[2]
        self.total += a.sum(axis=(0, 2))
        self.total_abs += np.abs(a).sum(axis=(0, 2))
        self.total_sq += (a * a).sum(axis=(0, 2))
        self.zeros += (a == 0).sum(axis=(0, 2))
        self.rank_sum += feature_map_ranks(activation).sum(axis=0)
        self.samples += a.shape[0]
        return np.abs(a).mean(axis=2)

    @property
    def mean(self) -> np.ndarray:
        """Mean activation per atom."""
        return self.total / np.maximum(self.elements, 1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation of the activation per atom."""
        return np.sqrt(np.maximum(self.total_sq / np.maximum(self.elements, 1) - self.mean**2, 0.0))


def feature_map_ranks(activation: np.ndarray) -> np.ndarray:
    """Rank of each sample's feature map per channel, [N, C] (HRank); 0/1 for non-spatial features.

    The rank is numerical at the precision the activation was computed in (tolerance
    max(H, W) * eps(dtype) * largest singular value, as `torch.linalg.matrix_rank`): a float32
    map that is low-rank up to rounding counts as low-rank."""
    if activation.ndim < 4:
        flat = activation.reshape(activation.shape[0], activation.shape[1], -1)
        return (np.abs(flat).max(axis=2) > 0).astype(np.float64)
    maps = (
        activation.reshape(activation.shape[:2] + (-1,) + activation.shape[-1:]) if activation.ndim > 4 else activation
    )
    precision = np.promote_types(maps.dtype, np.float32)  # float16 maps: float32 (linalg has no float16)
    return np.linalg.matrix_rank(maps.astype(precision, copy=False)).astype(np.float64)


def _column_norms(view: ModelView, weight: WeightUse) -> np.ndarray:
    """|W[:, c]|_1 of each input channel c a consumer weight reads (a packed MatMulNBits weight:
    of its dequantized values, per input channel of its blocks)."""
    name, axis = weight.space.tensor, weight.space.axis
    if name in view.decoded:
        return input_norms(view.weight_values(name))
    return np.abs(member_matrix(view.consts[name], axis)).sum(axis=1)


def collect_stats(
    model: onnx.ModelProto, groups: list[ChannelGroup], view: ModelView, data, progress=None
) -> dict[Space, SpaceStats]:
    """Stream the calibration data once; per probed space, running statistics and, per consumer,
    the empirical sensitivity max_x (|W[:, c]|_1 mean|a_c(x)|) / sum_k (|W[:, k]|_1 mean|a_k(x)|)."""
    gated = GatedModel(model, groups, view, observe=True)
    stats = {s: SpaceStats(view.shapes[s.tensor][s.axis]) for s in gated.spaces}
    column_norms = {p: _column_norms(view, p.weight) for p in gated.probes}
    for feeds, _ in data.batches():
        outputs = gated.run(feeds)
        per_sample = {s: stats[s].update(np.moveaxis(outputs[s.tensor], s.axis, 1)) for s in gated.spaces}
        for probe in gated.probes:
            contribution = per_sample[probe.space] * column_norms[probe]
            ratio = contribution / np.maximum(contribution.sum(axis=1, keepdims=True), 1e-30)
            running = stats[probe.space].sensitivity
            running[probe.weight.node] = np.maximum(running.get(probe.weight.node, 0.0), ratio.max(axis=0))
        if progress:
            progress()
    return stats
