"""Allocation strategies driven by calibration data: `sensitivity` and `random-search`.

Both measure pruned models with `GatedModel` (gating a channel to 0 in front of every consumer
computes exactly what removing it computes), streaming the calibration set batch by batch:

* `sensitivity` measures each prunable group *alone* at ratios 0.1…0.9 (the output change curves
  of `onnxprune sensitivity`), then spends the budget greedily: from ratio 0 everywhere it
  repeatedly moves the group whose next ratio adds the least squared output change per unit of
  budget saved, until the target is met (the last move in one-channel steps, so that it lands
  within `TOLERANCE` below the target); `refill` closes what is left of the gap.
* `random-search` (random channel pruning, Li et al. 2022): `samples` random per-group ratio
  shapes, each scaled by bisection until the plan meets the target (then refilled), evaluated by
  the relative L2 change of the first output on the calibration set; the best one wins.
  Candidate 0 is the uniform shape, so the search never does worse than `uniform` on the data.

`jobs > 1` shares the measurements among spawned processes, each with its own session and data
stream; every number is computed exactly as in one process, so the plan is the same.

This module is imported at the end of `allocate.py` (which registers the strategies) and must not
import `api` or `sensitivity` at module level (they import `allocate`).
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune.errors import InputError
from onnxprune.measure.gated import keep_gate
from onnxprune.select.allocation import (
    TOLERANCE,
    Allocation,
    AllocationContext,
    achieved_ratios,
    fit,
    refill,
    strategy,
)
from onnxprune.select.plan import PruningPlan

#: Ratios at which the sensitivity strategy measures each group.
SENSITIVITY_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Largest model (bytes) that is sent to worker processes; larger ones are measured in-process.
_MAX_SHARED_MODEL = 1 << 30


# --------------------------------------------------------------------------- measurement


@dataclass
class CandidateScores:
    """Output change (relative L2 of the first output over the whole set) and top-1 (None without
    labels) of each candidate plan, plus the unpruned top-1."""

    output_change: list[float]
    top1: list[float | None]
    baseline_top1: float | None


def _require_data(ctx: AllocationContext, name: str):
    """The calibration data; InputError without them or with --jobs < 1."""
    if ctx.data is None:
        raise InputError(f"--allocate {name} measures pruned models on calibration data: add --calib PATH "
                         "(.npz/.npy or an image folder)")
    if ctx.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {ctx.jobs}")
    return ctx.data


def score_candidates(gated, data, candidates: list[dict[str, np.ndarray]],
                     progress: Callable[[], None] | None = None) -> dict:
    """Stream the calibration set once: per batch the unpruned output, then each candidate
    ({group id: kept channel ids}, the groups it prunes) with its groups gated. Returns the running
    sums: reference_sq, diff_sq and correct per candidate, samples, labelled, reference_correct."""
    from onnxprune.measure.sensitivity import _correct, _top1_labels

    output = gated.outputs[0]
    sums = {"reference_sq": 0.0, "reference_correct": 0, "samples": 0, "labelled": True,
            "diff_sq": np.zeros(len(candidates)), "correct": np.zeros(len(candidates), np.int64)}
    gates = [{gid: keep_gate(gated.groups[gid].channels, kept) for gid, kept in c.items()} for c in candidates]
    for feeds, labels in data.batches():
        reference = gated.run(feeds)[output].astype(np.float64)
        labels = _top1_labels(reference, labels)
        sums["reference_sq"] += float(np.sum(reference * reference))
        sums["samples"] += reference.shape[0]
        sums["labelled"] = sums["labelled"] and labels is not None
        if labels is not None:
            sums["reference_correct"] += _correct(reference, labels)
        for index, class_gates in enumerate(gates):
            result = gated.run(feeds, class_gates)[output] if class_gates else reference
            diff = result.astype(np.float64) - reference
            sums["diff_sq"][index] += float(np.sum(diff * diff))
            if labels is not None:
                sums["correct"][index] += _correct(result, labels)
        if progress:
            progress()
    return sums


@dataclass
class _Job:
    """The work of one process: the normalized model, its groups, the data to open, and either
    sensitivity plans (kind 'curves') or candidates (kind 'candidates')."""

    model: bytes
    groups: list
    calib: str
    samples: int
    preprocess: object
    batch_size: int
    seed: int
    threads: int
    kind: str
    work: list


def _worker(job: _Job):
    """Entry point of a worker process: its own view, gated session and data stream."""
    import onnx

    from onnxprune.measure.calibration import load_calibration
    from onnxprune.measure.gated import GatedModel
    from onnxprune.model.view import ModelView

    model = onnx.load_from_string(job.model)
    gated = GatedModel(model, job.groups, ModelView(model), threads=job.threads)
    data = load_calibration(job.calib, model, job.samples, job.preprocess, job.batch_size, job.seed)
    return _measure(job.kind, gated, data, job.work, None)


def _measure(kind: str, gated, data, work: list, progress):
    from onnxprune.measure.sensitivity import measure

    if kind == "curves":
        return measure(gated, data, work, progress)
    return score_candidates(gated, data, work, progress)


def _run(ctx: AllocationContext, kind: str, work: list) -> list:
    """Measure `work` (split into at most `ctx.jobs` interleaved shares); one result per share, in
    share order (share i holds items i, i + jobs, …)."""
    from onnxprune.measure.gated import GatedModel
    from onnxprune.measure.sensitivity import _cores

    analysis, data = ctx.analysis, ctx.data
    jobs = min(ctx.jobs, len(work))
    if jobs > 1 and analysis.model.ByteSize() < _MAX_SHARED_MODEL:
        payload = analysis.model.SerializeToString()
        threads = max(1, _cores() // jobs)
        shares = [_Job(payload, analysis.groups, str(data.source), data.samples, data.preprocess,
                       data.batch_size, data.seed, threads, kind, work[i::jobs]) for i in range(jobs)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [pool.submit(_worker, share) for share in shares]
            for future in as_completed(futures):
                future.result()
                if ctx.progress:
                    ctx.progress()
        return [future.result() for future in futures]
    gated = GatedModel(analysis.model, analysis.groups, analysis.view)
    return [_measure(kind, gated, data, work, ctx.progress)]


def _interleave(shares: list[list], jobs: int) -> list:
    """Undo the i::jobs split: items of share i sit at positions i, i + jobs, …"""
    total = sum(len(s) for s in shares)
    merged = [None] * total
    for i, share in enumerate(shares):
        merged[i::jobs] = share
    return merged


def measure_candidates(ctx: AllocationContext, candidates: list[dict[str, np.ndarray]]) -> CandidateScores:
    """Output change and top-1 of each candidate ({group id: kept channel ids}) on ctx.data."""
    from onnxprune.measure.sensitivity import _relative

    parts = _run(ctx, "candidates", candidates)
    jobs = len(parts)
    first = parts[0]
    change = _interleave([[_relative(d, p["reference_sq"]) for d in p["diff_sq"]] for p in parts], jobs)
    labelled = first["labelled"] and first["samples"] > 0
    top1 = _interleave([[float(c / p["samples"]) if labelled else None for c in p["correct"]] for p in parts],
                       jobs)
    baseline = first["reference_correct"] / first["samples"] if labelled else None
    return CandidateScores(change, top1, baseline)


# --------------------------------------------------------------------------- sensitivity


def _prunable(ctx: AllocationContext) -> list:
    return [g for g in ctx.analysis.groups if g.prunable]


def _kept(ctx: AllocationContext, group, ratio: float) -> np.ndarray:
    """The channels `group` keeps at `ratio` (local selection with the run's options)."""
    plan = ctx.ratios_plan({group.id: ratio})
    return plan.kept.get(group.id, np.arange(group.channels))


@strategy("sensitivity")
def sensitivity_allocation(ctx: AllocationContext) -> Allocation:
    """Measure each group alone at 0.1…0.9, then spend the budget where the output suffers least."""
    from onnxprune.measure.sensitivity import _relative

    _require_data(ctx, "sensitivity")
    groups = _prunable(ctx)
    kept = {g.id: [_kept(ctx, g, r) for r in SENSITIVITY_RATIOS] for g in groups}
    deepest = PruningPlan(ctx.analysis.groups, {gid: sets[-1] for gid, sets in kept.items()})
    value = ctx.value(deepest)
    if value > ctx.budget.target:
        unit = " ms" if ctx.budget.kind == "latency" else ""
        raise InputError(f"the {ctx.budget.kind} target {ctx.budget.target:.4g}{unit} cannot be reached: pruning "
                         f"every group by {SENSITIVITY_RATIOS[-1]:.0%} (the deepest ratio the sensitivity "
                         f"strategy measures) gives {value:.4g}{unit}")
    sums = _run(ctx, "curves", [(g.id, kept[g.id]) for g in groups])
    reference_sq, samples, labelled = sums[0].reference_sq, sums[0].samples, sums[0].labelled
    diff_sq = {gid: d for part in sums for gid, d in part.diff_sq.items()}
    correct = {gid: c for part in sums for gid, c in part.correct.items()}
    curves = {}
    for group in groups:
        curves[group.id] = {
            "name": group.name, "channels": group.channels, "ratios": list(SENSITIVITY_RATIOS),
            "kept": [len(k) for k in kept[group.id]],
            "output_change": [_relative(d, reference_sq) for d in diff_sq[group.id]],
            "top1": [float(c / samples) if labelled else None for c in correct[group.id]]}
    history: list[dict] = [{"curves": curves, "samples": samples,
                            "baseline_top1": sums[0].reference_correct / samples if labelled else None}]
    greedy = _Greedy(ctx, groups, {gid: c["output_change"] for gid, c in curves.items()}, history)
    plan = greedy.run_latency() if ctx.budget.kind == "latency" else greedy.run()
    plan = refill(ctx, plan, history)
    return Allocation(plan, achieved_ratios(plan), history)


class _Greedy:
    """Spend the budget where the output suffers least.

    Each group sits at a ratio (0 at first). A *move* takes one group to its next measured ratio
    (0.1, 0.2, … 0.9); its price is the *squared* output change it adds (from the group's curve,
    made monotone by a running maximum) per share of the model's budget quantity it saves. Squares,
    because the output perturbations of different groups add up roughly in quadrature
    (||d1 + d2||² ≈ ||d1||² + ||d2||²), so their sum estimates the whole plan's change; one step at a
    time, because the change saturates (a destroyed output cannot get worse), which would make a
    jump to 0.9 look cheap. Savings are computed exactly on the whole plan (a layer's MACs depend
    on the groups on both of its sides) and lazily: a group's savings only shrink as its neighbours
    are pruned, so a popped move whose fresh price still beats the next one in the heap is the
    cheapest.

    Near the target, a move that would overshoot it (land more than TOLERANCE below) is replaced
    by one-channel-granular moves, with the change interpolated between measured ratios (see
    `run`)."""

    def __init__(self, ctx: AllocationContext, groups: list, changes: dict[str, list[float]],
                 history: list[dict]):
        self.ctx, self.history = ctx, history
        self.groups = {g.id: g for g in groups}
        self.order = {g.id: i for i, g in enumerate(groups)}
        self.kind = "flops" if ctx.budget.kind == "latency" else ctx.budget.kind
        self.curve = {gid: (np.array((0.0,) + SENSITIVITY_RATIOS),
                            np.maximum.accumulate(np.square([0.0] + list(c)))) for gid, c in changes.items()}
        self.ratio = {g.id: 0.0 for g in groups}
        self.kept_cache: dict[tuple[str, float], np.ndarray] = {}
        self.baseline = self.value(self.ratio)
        self.current = self.baseline

    def kept(self, gid: str, ratio: float) -> np.ndarray:
        key = (gid, ratio)
        if key not in self.kept_cache:
            self.kept_cache[key] = _kept(self.ctx, self.groups[gid], ratio)
        return self.kept_cache[key]

    def plan(self, ratios: dict[str, float]) -> PruningPlan:
        return PruningPlan(self.ctx.analysis.groups, {g: self.kept(g, r) for g, r in ratios.items() if r > 0})

    def value(self, ratios: dict[str, float]) -> float:
        """The budget's quantity (MACs for latency budgets) of the plan with these ratios."""
        return self.ctx.cost.cost(self.plan(ratios))[self.kind]

    def damage(self, gid: str, ratio: float) -> float:
        """The group's squared output change at `ratio` (interpolated between measured ratios)."""
        xs, ys = self.curve[gid]
        return float(np.interp(ratio, xs, ys))

    def moved(self, gid: str, ratio: float) -> tuple[float, float]:
        """(value after moving `gid` to `ratio`, price of that move or inf when it saves nothing)."""
        value = self.value({**self.ratio, gid: ratio})
        saved = (self.current - value) / self.baseline
        added = self.damage(gid, ratio) - self.damage(gid, self.ratio[gid])
        return value, (added / saved if saved > 0 else math.inf)

    def coarse_move(self, gid: str):
        """The move of `gid` to its next measured ratio that saves something: (price, ratio, value),
        or None at the deepest ratio."""
        for ratio in SENSITIVITY_RATIOS:
            if ratio > self.ratio[gid]:
                value, price = self.moved(gid, ratio)
                if price < math.inf:
                    return price, ratio, value
        return None

    def fine_moves(self, gid: str, upto: float):
        """By bisection over one-channel steps (of the group's widest space) up to ratio `upto`:
        the shallowest move of `gid` that meets the target and the deepest that does not, each as
        (price, ratio, value) or None."""
        channels = self.groups[gid].channels
        grid = [r for r in ((n + 0.5) / channels for n in range(1, channels)) if self.ratio[gid] < r < upto] + [upto]
        target = self.ctx.budget.target
        low, high = -1, len(grid)  # grid[high] meets the target, grid[low] does not
        values = {}
        while high - low > 1:
            middle = (low + high) // 2
            values[middle] = self.moved(gid, grid[middle])
            low, high = (low, middle) if values[middle][0] <= target else (middle, high)
        meets = (values[high][1], grid[high], values[high][0]) if high < len(grid) else None
        misses = (values[low][1], grid[low], values[low][0]) if low >= 0 else None
        return meets, misses

    def accept(self, gid: str, ratio: float, value: float, price: float, how: str) -> None:
        self.ratio[gid] = ratio
        self.current = value
        self.history.append({"step": sum(1 for h in self.history if "step" in h) + 1, "move": how, "group": gid,
                             "ratio": round(ratio, 6), "kept": len(self.kept(gid, ratio)),
                             "output_change": math.sqrt(self.damage(gid, ratio)),
                             "estimated_total_change": math.sqrt(self.total_damage()), "price": price,
                             self.kind: value})

    def heap(self) -> list:
        entries = []
        for gid in self.groups:
            move = self.coarse_move(gid)
            if move:
                entries.append((move[0], self.order[gid], gid))
        heapq.heapify(entries)
        return entries

    def pop(self, heap: list):
        """The cheapest coarse move (lazy re-pricing), or None when no group can go deeper."""
        while heap:
            _, _, gid = heapq.heappop(heap)
            move = self.coarse_move(gid)
            if move is None:
                continue
            if heap and move[0] > heap[0][0]:
                heapq.heappush(heap, (move[0], self.order[gid], gid))
                continue
            return gid, move
        return None

    def run(self) -> PruningPlan:
        """flops/params: moves until the target is met. When the cheapest move would overshoot,
        the cheapest move (in one-channel steps, no deeper than each group's next measured ratio)
        that lands within the tolerance ends the search; if none lands, the cheapest move that
        stays above the target is taken (it may open a landing), and when no such move is left, the
        closest plan below the target seen on the way wins."""
        target = self.ctx.budget.target
        floor = target * (1 - TOLERANCE)
        heap = self.heap()
        below: list[tuple] = []  # plans below the tolerance met on the way: (value, -change, ratios, move)
        while self.current > target:
            popped = self.pop(heap)
            if popped is None:
                break
            gid, (price, ratio, value) = popped
            if value >= floor:
                self.accept(gid, ratio, value, price, "measured ratio")
                self._push(heap, gid)
                continue
            landing, approach = [], []
            for other in self.groups:
                step = self.coarse_move(other)
                if step is None:
                    continue
                if step[2] > target:  # its next ratio stays above the target
                    approach.append((step[0], self.order[other], other, step))
                    continue
                meets, misses = self.fine_moves(other, step[1])
                if meets:
                    added = self.damage(other, meets[1]) - self.damage(other, self.ratio[other])
                    if meets[2] >= floor:
                        landing.append((added, self.order[other], other, meets))
                    else:
                        below.append((meets[2], -(self.total_damage() + added), self.order[other],
                                      {**self.ratio, other: meets[1]}, (other, meets)))
                if misses and misses[0] < math.inf:
                    approach.append((misses[0], self.order[other], other, misses))
            if landing:
                _, _, other, (fine_price, fine_ratio, fine_value) = min(landing)
                self.accept(other, fine_ratio, fine_value, fine_price, "landing (one-channel steps)")
                break
            if not approach:
                added = self.damage(gid, ratio) - self.damage(gid, self.ratio[gid])
                below.append((value, -(self.total_damage() + added), self.order[gid], {**self.ratio, gid: ratio},
                              (gid, (price, ratio, value))))
                break
            _, _, other, (fine_price, fine_ratio, fine_value) = min(approach)
            self.accept(other, fine_ratio, fine_value, fine_price, "approach (one-channel steps)")
            heap = self.heap()
        if self.current > target and below:
            closest = max(below, key=lambda b: (b[0], b[1], -b[2]))
            self.ratio = dict(closest[3])
            other, (fine_price, fine_ratio, fine_value) = closest[4]
            self.accept(other, fine_ratio, fine_value, fine_price, "closest below the target")
        return self.plan(self.ratio)

    def total_damage(self) -> float:
        """Sum of the groups' squared output changes: the plan's squared change, estimated."""
        return sum(self.damage(gid, r) for gid, r in self.ratio.items())

    def _push(self, heap: list, gid: str) -> None:
        move = self.coarse_move(gid)
        if move:
            heapq.heappush(heap, (move[0], self.order[gid], gid))

    def run_latency(self) -> PruningPlan:
        """latency: the whole path of moves priced in MACs, then bisected on measured latency."""
        heap = self.heap()
        path = [self.plan(self.ratio)]
        while (popped := self.pop(heap)) is not None:
            gid, (price, ratio, value) = popped
            self.accept(gid, ratio, value, price, "measured ratio")
            self._push(heap, gid)
            path.append(self.plan(self.ratio))
        return _bisect_path(self.ctx, path, self.history)


def _bisect_path(ctx: AllocationContext, plans: list[PruningPlan], history: list[dict]) -> PruningPlan:
    """The first plan along the greedy path whose measured latency meets the target (the path's
    MACs fall step by step; measured latency roughly follows). The last plan meets it (checked)."""
    low, high = -1, len(plans) - 1
    while high - low > 1:
        middle = (low + high) // 2
        value = ctx.value(plans[middle])
        history.append({"path_step": middle, "latency": value})
        low, high = (low, middle) if value <= ctx.budget.target else (middle, high)
    history.append({"path_step": high, "latency": ctx.value(plans[high]), "chosen": True})
    return plans[high]


# --------------------------------------------------------------------------- random search


def _random_exponents(rng: np.random.Generator, count: int, uniform: bool) -> np.ndarray:
    """Per-group exponents a_g of the shape r_g(t) = t ** a_g (t in [0, 1) is bisected to the budget):
    a larger exponent prunes the group less; the uniform shape is all 1."""
    if uniform:
        return np.ones(count)
    spread = rng.uniform(0.5, 2.0)  # log-normal exponents, some candidates near uniform, some extreme
    return np.clip(np.exp(spread * rng.standard_normal(count)), 1 / 32, 32)


def _candidate(ctx: AllocationContext, groups: list, exponents: np.ndarray) -> tuple[PruningPlan, float]:
    """The plan of a shape scaled to the budget (bisection on t, then refill), and its t."""

    def plan_at(t: float) -> PruningPlan:
        return ctx.ratios_plan({g.id: float(t ** a) for g, a in zip(groups, exponents)})

    scale, plan, _ = fit(ctx, plan_at, [])
    return refill(ctx, plan, []), scale


@strategy("random-search")
def random_search(ctx: AllocationContext) -> Allocation:
    """`ctx.samples` random ratio shapes, each scaled to the budget, scored on calibration data by the
    relative change of the first output; the lowest change wins (seeded by `ctx.seed`)."""
    _require_data(ctx, "random-search")
    if ctx.samples < 1:
        raise InputError(f"--samples must be at least 1, got {ctx.samples}")
    groups = _prunable(ctx)
    rng = np.random.default_rng(ctx.seed)
    plans, shapes, tries = [], [], 0
    while len(plans) < ctx.samples:
        exponents = _random_exponents(rng, len(groups), uniform=tries == 0)
        tries += 1
        try:
            plan, scale = _candidate(ctx, groups, exponents)
        except InputError:
            if tries == 1 or tries > 4 * ctx.samples:
                raise  # the uniform shape cannot reach the target: no shape can
            continue
        plans.append(plan)
        shapes.append(scale)
    scores = measure_candidates(ctx, [dict(p.kept) for p in plans])
    values = [ctx.value(p) for p in plans]
    # the best score among the candidates that land within the tolerance (all of them, normally)
    close = [i for i, v in enumerate(values) if v >= ctx.budget.target * (1 - TOLERANCE)] or range(len(plans))
    best = min(close, key=lambda i: (scores.output_change[i], i))
    history = []
    for i, plan in enumerate(plans):
        history.append({"candidate": i, "shape": "uniform" if i == 0 else "random", "scale": shapes[i],
                        "ratios": {g: round(r, 6) for g, r in achieved_ratios(plan).items()},
                        **ctx.cost.cost(plan), ctx.budget.kind: values[i], "score": scores.output_change[i],
                        "top1": scores.top1[i], "chosen": i == best})
    history.append({"winner": best, "score": scores.output_change[best], "top1": scores.top1[best],
                    "baseline_top1": scores.baseline_top1, ctx.budget.kind: values[best]})
    return Allocation(plans[best], achieved_ratios(plans[best]), history)
