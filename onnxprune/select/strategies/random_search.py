"""`random-search` (random channel pruning, Li et al. 2022): `samples` random per-group ratio shapes,
each scaled by bisection until the plan meets the target (then refilled), evaluated on the
calibration data by the relative L2 change of the first output (measure/engine.py; `jobs > 1`
shares the candidates among processes, measure/pool.py) or, with `search_eval` reconstruct or
kd-steps:N, after a cheap recovery of each candidate (select/search_eval.py; in this process, one
candidate after the other); the best one wins. The history records each candidate's ranking
score and its raw output change. Candidate 0 is the uniform shape, so the search never does worse
than `uniform` on the data (by the chosen score).
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import InputError
from onnxprune.measure.pool import measure_work
from onnxprune.select.allocation import (
    STRATEGIES,
    Allocation,
    AllocationContext,
    achieved_ratios,
    fit,
    refill,
)
from onnxprune.select.budgets import TOLERANCE
from onnxprune.select.plan import PruningPlan
from onnxprune.select.search_eval import CandidateScore


@STRATEGIES.register("random-search")
def random_search(ctx: AllocationContext) -> Allocation:
    """`ctx.samples` random ratio shapes, each scaled to the budget, scored on calibration data by the
    relative change of the first output, or after a cheap recovery (`ctx.search`,
    select/search_eval.py); the lowest score wins (seeded by `ctx.seed`)."""
    data = ctx.require_data("random-search")
    if ctx.samples < 1:
        raise InputError(f"{{samples}} must be at least 1, got {ctx.samples}", parameter="samples")
    plans, scales = sample_candidates(ctx, ctx.prunable_groups())
    sums = measure_work(ctx.analysis, data, [(i, [dict(p.kept)]) for i, p in enumerate(plans)], ctx.jobs, ctx.progress)
    raw = [sums.output_changes(i)[0] for i in range(len(plans))]
    top1 = [sums.top1(i)[0] for i in range(len(plans))]
    scores = score_candidates(ctx, plans, raw)
    values = [ctx.value(p) for p in plans]
    # the best score among the candidates that land within the tolerance (all of them, normally)
    close = [i for i, v in enumerate(values) if v >= ctx.target.target * (1 - TOLERANCE)] or range(len(plans))
    best = min(close, key=lambda i: (scores[i].score, scores[i].tie, i))
    history = []
    for i, plan in enumerate(plans):
        history.append(
            {
                "candidate": i,
                "shape": "uniform" if i == 0 else "random",
                "scale": scales[i],
                "ratios": {g: round(r, 6) for g, r in achieved_ratios(plan).items()},
                **ctx.cost.cost(plan),
                ctx.target.kind: values[i],
                "score": scores[i].score,
                "raw_score": raw[i],
                **scores[i].record,
                "top1": top1[i],
                "chosen": i == best,
            }
        )
    history.append(
        {
            "winner": best,
            "search_eval": ctx.search.name,
            "score": scores[best].score,
            "raw_score": raw[best],
            "top1": top1[best],
            "baseline_top1": sums.baseline_top1,
            ctx.target.kind: values[best],
        }
    )
    return Allocation(plans[best], achieved_ratios(plans[best]), history)


def score_candidates(ctx: AllocationContext, plans: list[PruningPlan], raw: list[float]) -> list[CandidateScore]:
    """Each candidate's score: its raw output change, or (`ctx.search.recovers`) the score
    `ctx.evaluate` gives it after its recovery, one progress stage per candidate."""
    if not ctx.search.recovers:
        return [CandidateScore(change) for change in raw]
    if ctx.evaluate is None:
        raise ValueError(f"search_eval {ctx.search.name} needs AllocationContext.evaluate")
    stage = getattr(ctx.progress, "stage", None)
    scores = []
    for i, plan in enumerate(plans):
        if stage:
            stage(f"random search ({ctx.search.name}): candidate {i + 1}/{len(plans)}")
        scores.append(ctx.evaluate(plan))
    if stage:
        stage(None)
    return scores


def sample_candidates(ctx: AllocationContext, groups: list) -> tuple[list[PruningPlan], list[float]]:
    """`ctx.samples` candidate plans (the uniform shape first, then random ones, seeded by `ctx.seed`)
    that meet the budget, and the scale of each; a random shape that cannot reach the target is
    drawn again (at most 4 * samples draws)."""
    rng = np.random.default_rng(ctx.seed)
    plans: list[PruningPlan] = []
    scales: list[float] = []
    tries = 0
    while len(plans) < ctx.samples:
        exponents = random_exponents(rng, len(groups), uniform=tries == 0)
        tries += 1
        try:
            plan, scale = scaled_candidate(ctx, groups, exponents)
        except InputError:
            if tries == 1 or tries > 4 * ctx.samples:
                raise  # the uniform shape cannot reach the target: no shape can
            continue
        plans.append(plan)
        scales.append(scale)
    return plans, scales


def random_exponents(rng: np.random.Generator, count: int, uniform: bool) -> np.ndarray:
    """Per-group exponents a_g of the shape r_g(t) = t ** a_g (t in [0, 1) is bisected to the budget):
    a larger exponent prunes the group less; the uniform shape is all 1."""
    if uniform:
        return np.ones(count)
    spread = rng.uniform(0.5, 2.0)  # log-normal exponents, some candidates near uniform, some extreme
    return np.clip(np.exp(spread * rng.standard_normal(count)), 1 / 32, 32)


def scaled_candidate(ctx: AllocationContext, groups: list, exponents: np.ndarray) -> tuple[PruningPlan, float]:
    """The plan of a shape scaled to the budget (bisection on t, then refill), and its t."""

    def plan_at(t: float) -> PruningPlan:
        return ctx.ratios_plan({g.id: float(t**a) for g, a in zip(groups, exponents)})

    scale, plan, _ = fit(ctx, plan_at, [])
    return refill(ctx, plan, []), scale
