"""`uniform`: one ratio for every prunable group, the smallest that meets the target."""

from __future__ import annotations

from onnxprune.select.allocation import (
    STRATEGIES,
    Allocation,
    AllocationContext,
    achieved_ratios,
    fit,
    refill,
)
from onnxprune.select.budgets import TOLERANCE


@STRATEGIES.register("uniform")
def uniform(ctx: AllocationContext) -> Allocation:
    """One ratio for every group, the smallest that meets the target."""
    history: list[dict] = []
    groups = [g.id for g in ctx.prunable_groups()]
    high, plan, low = fit(ctx, lambda r: ctx.ratios_plan({g: r for g in groups}), history)
    if ctx.value(plan) >= ctx.target.target * (1 - TOLERANCE):
        return Allocation(plan, {g: high for g in groups}, history)
    mixed = mix_two_ratios(ctx, groups, low, high, history)
    plan = refill(ctx, mixed.plan, history)  # when one group's step is still wider than the tolerance
    return mixed if plan is mixed.plan else Allocation(plan, achieved_ratios(plan), history)


def mix_two_ratios(
    ctx: AllocationContext, groups: list[str], low: float, high: float, history: list[dict]
) -> Allocation:
    """Channel counts move in steps, and at one ratio many groups step together: give the larger
    ratio to the first k groups (network order) only, the fewest that meet the budget."""

    def ratios(k: int) -> dict[str, float]:
        return {g: high if i < k else low for i, g in enumerate(groups)}

    lo, hi = 0, len(groups)
    while hi - lo > 1:
        middle = (lo + hi) // 2
        value = ctx.value(ctx.ratios_plan(ratios(middle)))
        history.append({"groups_at_high_ratio": middle, ctx.target.kind: value})
        lo, hi = (lo, middle) if value <= ctx.target.target else (middle, hi)
    return Allocation(ctx.ratios_plan(ratios(hi)), ratios(hi), history)
