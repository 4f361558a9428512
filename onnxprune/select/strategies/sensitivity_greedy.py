"""`sensitivity`: measure each group alone, then spend the budget where the output suffers least.

Each prunable group is measured *alone* at ratios 0.1…0.9 on the calibration data (the output
change curves of `onnxprune sensitivity`, with the run's selection options), by the streaming
measurement (measure/engine.py; `jobs > 1` shares the groups among processes, measure/pool.py).
Then the budget is spent greedily (`Greedy`): from ratio 0 everywhere, it repeatedly moves the
group whose next ratio adds the least squared output change per unit of budget saved, until the
target is met (the last move in one-channel steps, so that it lands within `TOLERANCE` below the
target); `refill` closes what is left of the gap.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from onnxprune.errors import InputError
from onnxprune.measure.engine import group_curves
from onnxprune.measure.pool import measure_work
from onnxprune.select.allocation import (
    STRATEGIES,
    Allocation,
    AllocationContext,
    achieved_ratios,
    refill,
)
from onnxprune.select.budgets import TOLERANCE
from onnxprune.select.plan import PruningPlan

#: Ratios at which the sensitivity strategy measures each group.
SENSITIVITY_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


@STRATEGIES.register("sensitivity")
def sensitivity_allocation(ctx: AllocationContext) -> Allocation:
    """Measure each group alone at 0.1…0.9, then spend the budget where the output suffers least."""
    data = ctx.require_data("sensitivity")
    groups = ctx.prunable_groups()
    kept = {g.id: [ctx.kept(g, r) for r in SENSITIVITY_RATIOS] for g in groups}
    require_reachable(ctx, kept)
    sums = measure_work(ctx.analysis, data, group_curves([(g.id, kept[g.id]) for g in groups]), ctx.jobs, ctx.progress)
    curves = {
        g.id: {
            "name": g.name,
            "channels": g.channels,
            "ratios": list(SENSITIVITY_RATIOS),
            "kept": [len(k) for k in kept[g.id]],
            "output_change": sums.output_changes(g.id),
            "top1": sums.top1(g.id),
        }
        for g in groups
    }
    history: list[dict] = [{"curves": curves, "samples": sums.samples, "baseline_top1": sums.baseline_top1}]
    greedy = Greedy(ctx, groups, {gid: c["output_change"] for gid, c in curves.items()}, history)
    plan = greedy.run_latency() if ctx.target.kind == "latency" else greedy.run()
    plan = refill(ctx, plan, history)
    return Allocation(plan, achieved_ratios(plan), history)


def require_reachable(ctx: AllocationContext, kept: dict[str, list[np.ndarray]]) -> None:
    """InputError when pruning every group to its deepest measured ratio misses the target."""
    deepest = PruningPlan(ctx.analysis.groups, {gid: sets[-1] for gid, sets in kept.items()})
    value = ctx.value(deepest)
    if value > ctx.target.target:
        unit = " ms" if ctx.target.kind == "latency" else ""
        raise InputError(
            f"the {ctx.target.kind} target {ctx.target.target:.4g}{unit} cannot be reached: pruning "
            f"every group by {SENSITIVITY_RATIOS[-1]:.0%} (the deepest ratio the sensitivity "
            f"strategy measures) gives {value:.4g}{unit}"
        )


class Greedy:
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

    def __init__(self, ctx: AllocationContext, groups: list, changes: dict[str, list[float]], history: list[dict]):
        self.ctx, self.history = ctx, history
        self.groups = {g.id: g for g in groups}
        self.order = {g.id: i for i, g in enumerate(groups)}
        self.kind = "flops" if ctx.target.kind == "latency" else ctx.target.kind
        self.curve = {
            gid: (np.array((0.0,) + SENSITIVITY_RATIOS), np.maximum.accumulate(np.square([0.0] + list(c))))
            for gid, c in changes.items()
        }
        self.ratio = {g.id: 0.0 for g in groups}
        self.kept_cache: dict[tuple[str, float], np.ndarray] = {}
        self.baseline = self.value(self.ratio)
        self.current = self.baseline

    def kept(self, gid: str, ratio: float) -> np.ndarray:
        """The channels group `gid` keeps at `ratio` (cached)."""
        key = (gid, ratio)
        if key not in self.kept_cache:
            self.kept_cache[key] = self.ctx.kept(self.groups[gid], ratio)
        return self.kept_cache[key]

    def plan(self, ratios: dict[str, float]) -> PruningPlan:
        """The plan with each group at its ratio."""
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
        target = self.ctx.target.target
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
        """Move `gid` to `ratio` and record the step in the history."""
        self.ratio[gid] = ratio
        self.current = value
        self.history.append(
            {
                "step": sum(1 for h in self.history if "step" in h) + 1,
                "move": how,
                "group": gid,
                "ratio": round(ratio, 6),
                "kept": len(self.kept(gid, ratio)),
                "output_change": math.sqrt(self.damage(gid, ratio)),
                "estimated_total_change": math.sqrt(self.total_damage()),
                "price": price,
                self.kind: value,
            }
        )

    def heap(self) -> list:
        """A heap of every group's next coarse move: (price, network order, group id)."""
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
        target = self.ctx.target.target
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
            landing, approach = self.fine_options(target, floor, below)
            if landing:
                _, _, other, (fine_price, fine_ratio, fine_value) = min(landing)
                self.accept(other, fine_ratio, fine_value, fine_price, "landing (one-channel steps)")
                break
            if not approach:
                below.append(self.below_entry(gid, (price, ratio, value)))
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

    def fine_options(self, target: float, floor: float, below: list[tuple]) -> tuple[list, list]:
        """Near the target, each group's one-channel-granular moves up to its next measured ratio:
        (landings within the tolerance, by added change; approaches that stay above the target, by
        price). A move that lands below the tolerance goes to `below`."""
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
                    below.append(self.below_entry(other, meets))
            if misses and misses[0] < math.inf:
                approach.append((misses[0], self.order[other], other, misses))
        return landing, approach

    def below_entry(self, gid: str, move: tuple) -> tuple:
        """A plan below the tolerance met on the way, moving `gid` by `move` (price, ratio, value):
        (value, -estimated total change, network order, ratios, (gid, move))."""
        _, ratio, value = move
        added = self.damage(gid, ratio) - self.damage(gid, self.ratio[gid])
        return value, -(self.total_damage() + added), self.order[gid], {**self.ratio, gid: ratio}, (gid, move)

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
        return bisect_path(self.ctx, path, self.history)


def bisect_path(ctx: AllocationContext, plans: list[PruningPlan], history: list[dict]) -> PruningPlan:
    """The first plan along the greedy path whose measured latency meets the target (the path's
    MACs fall step by step; measured latency roughly follows). The last plan meets it (checked)."""
    low, high = -1, len(plans) - 1
    while high - low > 1:
        middle = (low + high) // 2
        value = ctx.value(plans[middle])
        history.append({"path_step": middle, "latency": value})
        low, high = (low, middle) if value <= ctx.target.target else (middle, high)
    history.append({"path_step": high, "latency": ctx.value(plans[high]), "chosen": True})
    return plans[high]
