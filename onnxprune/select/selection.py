"""Selection: from channel scores and a ratio to a `PruningPlan` (which channels each group keeps)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import ChannelGroup
from onnxprune.errors import InputError
from onnxprune.select.plan import PruningPlan


@dataclass
class SelectOptions:
    """How many channels to remove: `ratio` of each group (local) or of all (global)."""

    ratio: float = 0.5
    min_channels: int = 1
    round_to: int = 1
    scope: str = "local"

    def validate(self) -> None:
        """Raise InputError for values outside their range."""
        if not 0.0 <= self.ratio < 1.0 or math.isnan(self.ratio):
            raise InputError(f"{{ratio}} must be in [0, 1), got {self.ratio}", parameter="ratio")
        if self.min_channels < 1:
            raise InputError(f"{{min_channels}} must be at least 1, got {self.min_channels}", parameter="min_channels")
        if self.round_to < 1:
            raise InputError(f"{{round_to}} must be at least 1, got {self.round_to}", parameter="round_to")
        if self.scope not in ("local", "global"):
            raise InputError(f"{{scope}} must be 'local' or 'global', got '{self.scope}'", parameter="scope")


def select(groups: list[ChannelGroup], scores: dict[str, np.ndarray], options: SelectOptions) -> PruningPlan:
    """Choose the channels to keep in every prunable group."""
    options.validate()
    if options.scope == "local":
        return select_ratios(groups, scores, {g.id: options.ratio for g in groups if g.prunable}, options)
    prunable = [g for g in groups if g.prunable and options.ratio > 0]
    return _plan(groups, _global_pruned(prunable, scores, options))


def select_ratios(
    groups: list[ChannelGroup], scores: dict[str, np.ndarray], ratios: dict[str, float], options: SelectOptions
) -> PruningPlan:
    """Local selection with each group's own ratio (groups missing from `ratios` keep everything)."""
    pruned = {}
    for group in groups:
        ratio = ratios.get(group.id, 0.0)
        if group.prunable and ratio > 0:
            own = SelectOptions(ratio, options.min_channels, options.round_to, "local")
            pruned[group.id] = _local_pruned(group, scores[group.id], own)
    return _plan(groups, pruned)


def _plan(groups: list[ChannelGroup], pruned: dict[str, list[int]]) -> PruningPlan:
    kept = {}
    for group in groups:
        if group.id in pruned:
            mask = np.ones(group.channels, dtype=bool)
            mask[pruned[group.id]] = False
            kept[group.id] = np.flatnonzero(mask)
    return PruningPlan(groups, kept)


def rounded_keep(keep: int, round_to: int, channels: int) -> int:
    """`keep` rounded to the nearest multiple of `round_to` (at least one multiple, at most all)."""
    if round_to <= 1:
        return keep
    rounded = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
    return min(rounded, channels)


class _SpaceBudget:
    """Tracks how many atoms each space of a group keeps, so no space drops below its floor."""

    def __init__(self, group: ChannelGroup, floor: Callable[[int], int]):
        vectors = {v.tobytes(): v for v in group.channel_of.values()}.values()
        self.counts = np.stack([np.bincount(v, minlength=group.channels) for v in vectors])
        self.left = self.counts.sum(axis=1)
        self.floor = np.array([floor(int(size)) for size in self.left])
        self.pinned = set(group.pinned.tolist())

    @property
    def plain(self) -> bool:
        """True when every space holds exactly one atom of every channel."""
        return bool(np.all(self.counts == 1)) and not self.pinned

    @property
    def removable(self) -> int:
        """In a plain group: how many channels can go before a space reaches its floor."""
        return int(np.min(self.left - self.floor))

    def try_remove(self, channel: int) -> bool:
        """Remove a channel if it is not pinned and every space keeps its floor; report whether
        it was removed."""
        after = self.left - self.counts[:, channel]
        if channel in self.pinned or np.any(after < self.floor):
            return False
        self.left = after
        return True


def _local_pruned(group: ChannelGroup, scores: np.ndarray, options: SelectOptions) -> list[int]:
    """Lowest-scored channels first, while every space keeps (1 - ratio) of its size (rounded).

    In a plain group this removes exactly floor(ratio * C) channels. In a group whose spaces differ
    in size (Pad/Concat offsets), spaces are filled smallest first: each removes its lowest-scored
    channels down to its floor before a larger space (which also holds those channels) takes its
    turn, so every layer loses `ratio` of its channels whatever the criterion ranks lowest.
    """

    def floor(size: int) -> int:
        keep = max(size - math.floor(options.ratio * size), min(options.min_channels, size))
        return rounded_keep(keep, options.round_to, size)

    order = np.argsort(scores, kind="stable")
    budget = _SpaceBudget(group, floor)
    if budget.plain:
        return [int(c) for c in order[: budget.removable]]
    pruned: list[int] = []
    for row in np.argsort(budget.counts.sum(axis=1), kind="stable"):
        for channel in order:
            if budget.left[row] <= budget.floor[row]:
                break
            if budget.counts[row, channel] and channel not in pruned and budget.try_remove(int(channel)):
                pruned.append(int(channel))
    return pruned


def _global_pruned(groups: list[ChannelGroup], scores, options: SelectOptions) -> dict[str, list[int]]:
    if not groups:
        return {}
    order = sorted(((float(s), g.id, c) for g in groups for c, s in enumerate(scores[g.id])))
    target = math.floor(options.ratio * sum(g.channels for g in groups))
    budgets = {g.id: _SpaceBudget(g, lambda size: min(options.min_channels, size)) for g in groups}
    pruned: dict[str, list[int]] = {g.id: [] for g in groups}
    total = 0
    for _, gid, channel in order:
        if total >= target:
            break
        if budgets[gid].try_remove(channel):
            pruned[gid].append(channel)
            total += 1
    by_id = {g.id: g for g in groups}
    return {gid: _round_pruned(by_id[gid], chans, options.round_to) for gid, chans in pruned.items()}


def _round_pruned(group: ChannelGroup, pruned: list[int], round_to: int) -> list[int]:
    """Give back the best-scored pruned channels until the kept count is a multiple of round_to."""
    keep = min(group.channels, math.ceil((group.channels - len(pruned)) / round_to) * round_to)
    return pruned[: group.channels - keep]
