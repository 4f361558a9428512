"""The planning stage of `prune`: plain selection at a ratio, or an allocation strategy's plan for
a target (FLOPs, parameters, latency) or a layerwise map, with what the report says about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onnxprune.report.plots import kept_per_layer
from onnxprune.select.allocation import Allocation, AllocationContext, AllocationRequest, allocate
from onnxprune.select.budgets import PlanCost
from onnxprune.select.plan import PruningPlan
from onnxprune.select.search_eval import CandidateScore
from onnxprune.select.selection import SelectOptions, select

if TYPE_CHECKING:
    from onnxprune.analysis.analyze import Analysis


@dataclass
class PlannedAllocation(Allocation):
    """A strategy's Allocation with what the report needs: the fraction of output channels each
    producer layer keeps (network order) and the budget's value as the strategy measured it."""

    layers: list[dict] = field(default_factory=list)
    achieved: float | None = None


def plan_pruning(
    analysis: Analysis,
    scores: dict,
    options: SelectOptions,
    request: AllocationRequest,
    data=None,
    seed: int = 0,
    progress: Callable | None = None,
    evaluate: Callable[[PruningPlan], CandidateScore] | None = None,
) -> tuple[PruningPlan, PlannedAllocation | None]:
    """The plan: plain selection at `options.ratio`, or a strategy's allocation for a target
    or a layerwise map (`evaluate`: random-search's recovered score of a candidate, for
    `request.search_eval` reconstruct or kd-steps:N). Returns (plan, PlannedAllocation or None)."""
    if not request.active:
        return select(analysis.groups, scores, options), None
    cost = PlanCost(analysis, analysis.macs_shapes)
    budget = request.budget(cost, analysis)
    measure = memoized_latency(request.latency_meter(analysis))
    ctx = AllocationContext(
        analysis,
        scores,
        budget,
        options,
        cost,
        measure,
        data,
        seed,
        request.samples,
        request.jobs,
        request.layerwise_map(),
        progress,
        request.search,
        evaluate,
        request.study_samples,
    )
    assert request.strategy is not None, "an active request has chosen its strategy"
    result = allocate(ctx, request.strategy)
    layers = kept_per_layer(analysis.view.graph.node, analysis.groups, result.plan.kept)
    achieved = ctx.value(result.plan) if budget is not None else None
    return result.plan, PlannedAllocation(result.plan, result.ratios, result.history, layers, achieved)


def memoized_latency(measure: Callable[[PruningPlan], float] | None) -> Callable[[PruningPlan], float] | None:
    """`measure` (latency of a plan) run once per distinct plan: a strategy's bisection meets the
    same kept sets many times, and the reported latency is the one the strategy saw."""
    if measure is None:
        return None
    seen: dict = {}

    def cached(plan: PruningPlan) -> float:
        channels = {g.id: g.channels for g in plan.groups}
        key = tuple(sorted((gid, kept.tobytes()) for gid, kept in plan.kept.items() if len(kept) < channels[gid]))
        if key not in seen:
            seen[key] = measure(plan)
        return seen[key]

    return cached


def allocation_report(result: Allocation, request: AllocationRequest, report: dict) -> dict:
    """What the strategy did: target vs achieved, each group's ratio, the fraction of channels each
    layer keeps (network order), the search history."""
    entry = {
        "strategy": request.strategy,
        "ratios": result.ratios,
        "layers": getattr(result, "layers", None),
        "history": result.history,
    }
    if request.strategy == "random-search":
        entry["search_eval"] = request.search.name
    if request.kind:
        budget = request.resolved
        assert budget is not None, "plan_pruning resolved the target to a budget"
        achieved = {"flops": report["after"]["macs"], "params": report["after"]["params"]}.get(
            request.kind, getattr(result, "achieved", None)
        )
        entry["target"] = {**budget.to_dict(), "achieved": achieved}
    return entry
