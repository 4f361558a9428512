"""The cheap recovery that scores a random-search candidate (`--search-eval reconstruct|kd-steps:N`,
see select/search_eval.py): the candidate plan is applied to the input model as the prune
pipeline applies the final one (`apply_plan`), then reconstructed or distilled, and scored on
held-out calibration samples that are the same for every candidate (the split of both recoveries
depends only on the data and the seed). Only the ranking uses the recovered model: the chosen plan
is applied afresh and recovered afterwards only as `--reconstruct` / `--recover` ask.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from onnxprune.analysis.analyze import Analysis
from onnxprune.errors import InputError
from onnxprune.measure.calibration import CalibrationData
from onnxprune.passes.apply_plan import AppliedPlan, apply_plan
from onnxprune.recover.distill import DistillOptions, distill
from onnxprune.recover.reconstruct import reconstruct
from onnxprune.select.plan import PruningPlan
from onnxprune.select.search_eval import CandidateScore, SearchEval


def candidate_evaluator(
    analysis: Analysis,
    data: CalibrationData | None,
    search: SearchEval,
    seed: int = 0,
    ridge: float | None = None,
    progress: Callable | None = None,
) -> Callable[[PruningPlan], CandidateScore] | None:
    """`evaluate(plan)`: the plan's score after the recovery `search` names (None for raw, or
    without data: the strategy then refuses the missing data itself). `ridge` is reconstruction's
    λ (None: chosen per layer); `progress()` advances per layer or distillation step."""
    if not search.recovers or data is None:
        return None
    if search.mode == "kd" and (len(data.inputs) > 1 or data.samples < 2):
        raise InputError(
            f"{{search_eval}} {search.name} distills on the calibration samples: it needs a model with one "
            f"input and at least 2 samples (got {len(data.inputs)} input(s), {data.samples} sample(s))",
            parameter="search_eval",
        )

    def evaluate(plan: PruningPlan) -> CandidateScore:
        started = time.perf_counter()
        applied = apply_plan(analysis.model, plan, analysis.view)
        if search.mode == "reconstruct":
            score = reconstructed_score(analysis, applied, data, ridge, seed, progress)
        else:
            assert search.steps is not None, "parse_search_eval gives kd its steps"
            score = distilled_score(analysis, applied, data, search.steps, seed, progress)
        score.record["seconds"] = time.perf_counter() - started
        return score

    return evaluate


def reconstructed_score(
    analysis: Analysis, applied: AppliedPlan, data, ridge: float | None, seed: int, progress=None
) -> CandidateScore:
    """Held-out relative output error after least-squares reconstruction (the error before it when
    reconstruction is not applied: it never raises the error)."""
    rebuilt = reconstruct(analysis.model, applied.model, applied.weights, data, ridge, seed, progress)
    error = rebuilt.error_after if rebuilt.applied else rebuilt.error_before
    record = {
        "held_out_error_before": rebuilt.error_before,
        "held_out_error_after": rebuilt.error_after,
        "applied": rebuilt.applied,
        "held_out_samples": rebuilt.held_out_samples,
    }
    return CandidateScore(float(error), 0.0, record)


def distilled_score(
    analysis: Analysis, applied: AppliedPlan, data: CalibrationData, steps: int, seed: int, progress=None
) -> CandidateScore:
    """The held-out relative output error against the input model after `steps` distillation
    steps (the best checkpoint, which is never worse than the start; the metric distillation
    keeps its checkpoints by), ties broken by the held-out KL."""
    options = DistillOptions(seconds=None, steps=steps, seed=seed)
    distilled = distill(analysis.model, applied.model, data, options, progress=progress)
    after, before = distilled.after, distilled.before
    record = {
        "held_out_error": after["error"],
        "held_out_error_before": before["error"],
        "agreement": after["agreement"],
        "kl": after["kl"],
        "agreement_before": before["agreement"],
        "kl_before": before["kl"],
        "steps": distilled.steps,
        "held_out_samples": distilled.held_out_samples,
    }
    return CandidateScore(float(after["error"]), float(after["kl"]), record)
