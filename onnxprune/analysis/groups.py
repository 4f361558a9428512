"""Channel groups: connected channel spaces that must be pruned together.

Inside a group, every atom (one index of one space) belongs to a *channel*: the set of atoms the
links tie together. Pruning a channel removes all its atoms. In a plain group (every space the
same size, identity links) channel i is index i of every space; Pad/Concat offsets and Flatten
blocks make channels that cover several atoms or only some spaces.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from onnxprune.analysis.channels import ChannelGraph, build_channel_graph
from onnxprune.analysis.relations import Link, Space, WeightUse
from onnxprune.model.view import ModelView


@dataclass
class ChannelGroup:
    """Coupled channel spaces with their weight members; pruned as one unit or frozen with a reason.

    `pinned` channels can never be pruned (e.g. the position of a single-channel Concat input)."""

    id: str
    name: str
    channels: int
    spaces: list[Space]
    members: list[WeightUse]
    channel_of: dict[Space, np.ndarray] = field(repr=False)
    nodes: list[str] = field(default_factory=list)
    frozen: str | None = None
    pinned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def prunable(self) -> bool:
        """True when the group can be pruned."""
        return self.frozen is None

    def kept_atoms(self, space: Space, kept_channels: np.ndarray) -> np.ndarray:
        """Sorted indices of `space` that survive when `kept_channels` are kept."""
        return np.flatnonzero(np.isin(self.channel_of[space], kept_channels))

    def members_with(self, *roles: str) -> list[WeightUse]:
        """Weight members with one of the roles."""
        return [m for m in self.members if m.role in roles]

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "id": self.id,
            "name": self.name,
            "channels": self.channels,
            "members": sorted({str(m.space) for m in self.members}),
            "frozen": self.frozen,
        }


def find_groups(view: ModelView, exclude: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """All channel groups of a model that hold weights, in network order."""
    channels = build_channel_graph(view)
    weight_spaces = {use.space for use in channels.weights}
    components = [c for c in nx.connected_components(channels.graph) if c & weight_spaces]
    order = _tensor_order(view)
    components.sort(key=lambda c: min(order.get(s.tensor, len(order)) for s in c))
    uses: dict[Space, list[WeightUse]] = {}
    for use in channels.weights:
        uses.setdefault(use.space, []).append(use)
    groups = [_make_group(f"g{i}", comp, channels, order, uses) for i, comp in enumerate(components)]
    for group in groups:
        _apply_exclusions(group, exclude)
    return groups


def _tensor_order(view: ModelView) -> dict[str, int]:
    order: dict[str, int] = {}
    for index, node in enumerate(view.graph.node):
        for name in list(node.input) + list(node.output):
            order.setdefault(name, index)
    return order


def _make_group(gid: str, component: set[Space], channels: ChannelGraph, order, uses) -> ChannelGroup:
    spaces = sorted(component, key=lambda s: (order.get(s.tensor, 0), s.tensor, s.axis))
    members = [use for space in spaces for use in uses.get(space, [])]
    nodes = list(dict.fromkeys(n for s in spaces for n in channels.touching.get(s, [])))
    producers = [m.node for m in members if m.role == "out"]
    name = producers[0] if producers else (nodes[0] if nodes else spaces[0].tensor)
    reasons = [channels.frozen[s] for s in spaces if s in channels.frozen]
    sizes = {s: channels.graph.nodes[s].get("size") for s in spaces}
    channel_of, count = assign_channels(spaces, channels.links_between(component), sizes)
    pinned = [channel_of[space][start:stop] for space, start, stop in channels.pins if space in component]
    return ChannelGroup(
        gid,
        name,
        count,
        spaces,
        members,
        channel_of,
        nodes,
        reasons[0] if reasons else None,
        np.unique(np.concatenate(pinned)) if pinned else np.zeros(0, dtype=np.int64),
    )


def assign_channels(spaces: list[Space], links: list[Link], sizes: dict) -> tuple[dict, int]:
    """Number the channels of a group: atoms tied by links share a channel id (union-find)."""
    sizes = {s: sizes[s] for s in spaces}
    if all(link.is_identity for link in links) and len(set(sizes.values())) == 1:
        size = next(iter(sizes.values()))
        return {s: np.arange(size) for s in spaces}, size
    base, total = {}, 0
    for space in spaces:
        base[space], total = total, total + sizes[space]
    parent = np.arange(total)
    for link in links:
        src = base[link.src] + np.repeat(np.arange(sizes[link.src]), link.block)
        dst = base[link.dst] + link.offset + np.arange(sizes[link.src] * link.block)
        for a, b in zip(src.tolist(), dst.tolist()):
            _union(parent, a, b)
    roots = np.array([_find(parent, i) for i in range(total)])
    _, labels = np.unique(roots, return_inverse=True)
    return {s: labels[base[s] : base[s] + sizes[s]] for s in spaces}, int(labels.max()) + 1


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _apply_exclusions(group: ChannelGroup, patterns: tuple[str, ...]) -> None:
    names = set(group.nodes) | {m.node for m in group.members} | {m.space.tensor for m in group.members}
    for pattern in patterns:
        if group.frozen is None and any(fnmatch.fnmatchcase(n, pattern) for n in names):
            group.frozen = f"excluded by --exclude '{pattern}'"
