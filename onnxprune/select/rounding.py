"""`--round-to auto`: kept channel counts chosen by measured latency.

For every pruned group, the plan's kept count k (the *requested* count) and a few larger counts
(the multiples of 8 above k up to the next multiple of 32, never more than the group's channels)
are timed on the chosen execution provider: each of the group's layers (the Conv/Gemm/MatMul that
produce or consume its channels, depthwise convs included) as a single-op model at its real input
shape, the other groups at the plan's counts, summed over the layers. Timings are cached on disk
per op signature, provider and device (`bench/cache.py`).

The rule (`choose_count`, a pure function of the timing table): a count is *monotone* when it is
never slower than any larger candidate; the chosen count is the smallest monotone count >= k.
So rounding never keeps fewer channels than asked, the group's layers are never slower than at k
(if k is not monotone, some larger count is faster than k, and the chosen one is at most as slow as
that), and no larger candidate would have been faster. Channels added back are the best-scored
pruned ones. Timings are noisy, so a larger count must be faster by more than `TOLERANCE` (a
relative margin) to beat a smaller one; without it, flat tables (depthwise and memory-bound layers,
whose time hardly depends on a few channels) would round up at random and add MACs for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import ChannelGroup, ModelView
from onnxprune.bench.cache import TimingCache
from onnxprune.bench.layers import LayerTimer, group_layers, uniform_atoms
from onnxprune.bench.providers import device_name, resolve_ep
from onnxprune.passes import apply_plan
from onnxprune.select.plan import PruningPlan

STEP = 8
SPAN = 32
#: A larger count must be faster by more than this share to beat a smaller one (timing noise).
TOLERANCE = 0.03


def candidate_counts(requested: int, channels: int, step: int = STEP, span: int = SPAN) -> list[int]:
    """`requested`, the multiples of `step` above it up to the next multiple of `span`, capped at
    `channels` (included when the cap falls below that multiple)."""
    top = min(channels, math.ceil(requested / span) * span)
    counts = {requested, *range((requested // step + 1) * step, top + 1, step)}
    if top == channels:
        counts.add(channels)
    return sorted(c for c in counts if requested <= c <= channels)


def monotone_counts(times: dict[int, float], tolerance: float = 0.0) -> list[int]:
    """Counts whose time is at most (1 + `tolerance`) × the time of every larger count (the
    largest always is); `tolerance` = 0 is the strict rule, > 0 ignores differences within noise."""
    result, best = [], math.inf
    for count in sorted(times, reverse=True):
        if times[count] <= best * (1.0 + tolerance):
            result.append(count)
        best = min(best, times[count])
    return sorted(result)


def choose_count(times: dict[int, float], requested: int, tolerance: float = 0.0) -> int:
    """The smallest monotone count >= `requested` (`requested` when the table has none above it)."""
    above = [c for c in monotone_counts(times, tolerance) if c >= requested]
    return min(above) if above else requested


def choose_counts(
    tables: dict[str, dict[int, float]], requested: dict[str, int], tolerance: float = 0.0
) -> dict[str, int]:
    """`choose_count` for every group of a timing table (group id -> count -> ms)."""
    return {gid: choose_count(tables.get(gid, {}), count, tolerance) for gid, count in requested.items()}


def keep_best(scores: np.ndarray, count: int) -> np.ndarray:
    """The sorted ids of the `count` best-scored channels (ties as `select` breaks them)."""
    order = np.argsort(scores, kind="stable")
    return np.sort(order[len(order) - count :])


@dataclass
class AutoRoundOptions:
    """Where to time: execution provider (short name), batch size, ONNX Runtime threads, cache folder
    (None: the default, see `bench.cache.cache_dir`), and whether to ignore cached timings."""

    ep: str = "cpu"
    batch: int = 1
    threads: int = 0
    cache_dir: str | None = None
    refresh: bool = False
    tolerance: float = TOLERANCE


def auto_round(
    analysis,
    scores: dict[str, np.ndarray],
    plan: PruningPlan,
    options: AutoRoundOptions,
    progress: Callable | None = None,
    timer=None,
) -> tuple[PruningPlan, dict]:
    """The plan with every pruned group's kept count chosen by `choose_count`, and a report
    (per group: requested and chosen count, timing table, or why it was skipped). `timer` (a
    `bench.layers.LayerTimer`-like object) replaces the real one in tests."""

    ep = resolve_ep(options.ep)
    device = device_name(ep.device_type)
    if timer is None:
        timer = LayerTimer(
            ep, TimingCache(ep.name, device, options.cache_dir), options.threads, refresh=options.refresh
        )
    pruned_view = ModelView(apply_plan(analysis.model, plan, analysis.view).model)
    rows, kept = [], dict(plan.kept)
    for group in plan.groups:
        if group.id in plan.kept and plan.is_pruned(group):
            row = _round_group(group, plan.kept_count(group), pruned_view, options, timer, progress)
            rows.append(row)
            if row["chosen"] != row["requested"]:
                kept[group.id] = keep_best(scores[group.id], row["chosen"])
    if getattr(timer, "cache", None) is not None:
        timer.cache.save()
    report = {
        "ep": ep.name,
        "provider": ep.provider,
        "device": device,
        "batch": options.batch,
        "threads": options.threads,
        "tolerance": options.tolerance,
        "rule": "smallest count >= requested that no larger count beats by more than the tolerance",
        "layers_timed": getattr(timer, "timed", None),
        "cache": str(timer.cache.path) if getattr(timer, "cache", None) is not None else None,
        "groups": rows,
    }
    return PruningPlan(plan.groups, kept), report


def _round_group(
    group: ChannelGroup, requested: int, pruned_view: ModelView, options: AutoRoundOptions, timer, progress
) -> dict:
    """One group's row of the rounding report."""
    row = {
        "id": group.id,
        "name": group.name,
        "channels": group.channels,
        "requested": requested,
        "chosen": requested,
        "layers": 0,
        "times_ms": {},
        "skipped": None,
    }
    if not uniform_atoms(group):
        row["skipped"] = "channels map unevenly onto its layers (Pad/Concat offsets or pinned channels)"
        return row
    specs = group_layers(group, pruned_view, options.batch)
    counts = candidate_counts(requested, group.channels)
    row["layers"] = len(specs)
    if not specs:
        row["skipped"] = "no Conv/Gemm/MatMul layer with known shapes"
    elif len(counts) > 1:
        times = timer.group_times(specs, counts, progress)
        row["times_ms"] = {str(c): times[c] for c in counts}
        row["chosen"] = choose_count(times, requested, options.tolerance)
    return row
