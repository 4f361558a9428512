"""`global`: one threshold over normalized scores across all groups (the ranking of --scope global),
bisected to the target, then refilled."""

from __future__ import annotations

from onnxprune.select.allocation import (
    STRATEGIES,
    Allocation,
    AllocationContext,
    achieved_ratios,
    fit,
    refill,
)
from onnxprune.select.plan import PruningPlan
from onnxprune.select.selection import SelectOptions, select


@STRATEGIES.register("global")
def global_threshold(ctx: AllocationContext) -> Allocation:
    """One threshold over normalized scores across all groups (the global ranking of --scope global)."""
    history: list[dict] = []

    def plan_at(ratio: float) -> PruningPlan:
        options = SelectOptions(ratio, ctx.options.min_channels, ctx.options.round_to, "global")
        return select(ctx.analysis.groups, ctx.scores, options)

    _, plan, _ = fit(ctx, plan_at, history)
    plan = refill(ctx, plan, history)
    return Allocation(plan, achieved_ratios(plan), history)
