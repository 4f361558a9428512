"""The Python API, mirrored by the command line: `prune(...)` and `analyze(...)`.

`prune` is a list of stages, each in the room of its stage: analyze (analysis/), score
(criteria/), plan (select/), round (select/rounding.py), apply (passes/), verify (verify/),
recover (recover/), report (report/ and the plan file, select/plan.py). The CLI builds the same
`PruneConfig` and calls `run_prune`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxprune.analysis.analyze import (
    Analysis,
    ModelLike,
    analyze,
    load_and_analyze,
    require_finite_weights,
    require_prunable,
)
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.config import PruneConfig
from onnxprune.criteria.scoring import score_groups
from onnxprune.measure.calibration import CalibrationData
from onnxprune.model.io import atomic_write_text, save_model
from onnxprune.passes.apply_plan import apply_plan
from onnxprune.recover.candidates import candidate_evaluator
from onnxprune.recover.distill import Distillation, distill
from onnxprune.recover.reconstruct import Reconstruction, reconstruct
from onnxprune.report.document import prune_report
from onnxprune.select.allocation import STUDY_SAMPLES
from onnxprune.select.plan import (
    PLAN_FORMAT,
    PruningPlan,
    default_plan_path,
    plan_document,
    record_recovery,
)
from onnxprune.select.planning import PlannedAllocation, allocation_report, plan_pruning
from onnxprune.select.rounding import auto_round
from onnxprune.verify.verification import (
    Verified,
    require_valid_model,
    set_verification_shapes,
    verify_or_freeze,
)

__all__ = [
    "PLAN_FORMAT",
    "Analysis",
    "ModelLike",
    "PruneConfig",
    "PruneResult",
    "analyze",
    "default_plan_path",
    "load_and_analyze",
    "prepare",
    "prune",
    "require_prunable",
    "run_prune",
    "score_groups",
]

Progress = Callable[..., None] | None


@dataclass
class PruneResult:
    """A pruned model with its plan (the plan file's content) and report."""

    model: onnx.ModelProto
    plan: dict
    report: dict
    groups: list[ChannelGroup] = field(repr=False)
    #: Whether the written model declares the shapes of intermediate tensors (graph.value_info):
    #: only when the input did (else the output would grow by them, and be larger than its input).
    value_info: bool = True

    def save(
        self,
        path: str | os.PathLike,
        plan_path: str | os.PathLike | None = None,
        report_path: str | os.PathLike | None = None,
    ) -> Path:
        """Write the model (atomically), the plan next to it (or to `plan_path`), and the report."""
        path = Path(path)
        shapes = list(self.model.graph.value_info)
        if not self.value_info:
            del self.model.graph.value_info[:]
        try:
            save_model(self.model, path)
        finally:
            if not self.value_info:
                self.model.graph.value_info.extend(shapes)
        atomic_write_text(plan_path or default_plan_path(path), json.dumps(self.plan))
        if report_path:
            atomic_write_text(report_path, json.dumps(self.report, indent=1))
        return path


def prune(
    model_or_path: ModelLike,
    criterion: str = "l1",
    ratio: float = 0.5,
    *,
    min_channels: int = 1,
    round_to: int | str = 1,
    scope: str = "local",
    exclude: tuple[str, ...] | list[str] = (),
    seed: int = 0,
    verify: bool = True,
    input_shapes: dict[str, tuple] | None = None,
    calib=None,
    calib_samples: int | None = 512,
    preprocess: str | None = None,
    batch_size: int = 64,
    progress=None,
    target_flops=None,
    target_params=None,
    target_latency=None,
    allocate: str | None = None,
    layerwise: dict | str | None = None,
    samples: int = 64,
    jobs: int = 1,
    search_eval: str | None = None,
    allocate_samples: int = STUDY_SAMPLES,
    reconstruct: bool = False,
    ridge: float | None = None,
    round_ep: str = "cpu",
    round_batch: int = 1,
    prune_residual: bool = False,
    strict: bool = False,
    eval_tokens: str | os.PathLike | None = None,
    recover: str | None = None,
    recover_time: float | None = None,
    recover_steps: int | None = None,
    recover_lr: float | None = None,
) -> PruneResult:
    """Prune `ratio` of the channels of every prunable group, chosen by `criterion`: the pruned
    model, its plan file and its report (`PruneResult`).

    Each keyword sets one field of a `PruneConfig` section (`config.KEYWORDS`; `run_prune` takes a
    config): selection (`min_channels`, `scope`, `exclude`, `prune_residual`), calibration for the
    data-driven criteria (`calib`: a .npz/.npy file or an image folder; `calib_samples`,
    `preprocess`, `batch_size`), allocation (`target_flops`/`target_params`: a fraction like 0.5 or
    '2.1G'; `target_latency`: ms on ONNX Runtime CPU; `allocate`: uniform, global, sensitivity,
    random-search with `samples`/`jobs` and `search_eval`, its ranking: None ('raw' output change),
    'reconstruct' or 'kd-steps:N' (each candidate's held-out score after that recovery, see
    select/search_eval.py); they measure `allocate_samples` samples; or `layerwise`), rounding
    (`round_to`: a multiple or 'auto', timed on `round_ep` at `round_batch`), recovery
    (`reconstruct` by least squares with `ridge`; `recover='kd'`: then label-free distillation
    from the input model on the calibration images for `recover_time` seconds (default 300)
    and/or `recover_steps` steps, at `recover_lr`, kept only if it agrees better), verification
    (`verify`, `input_shapes`, `strict`: refuse instead of freezing the groups whose pruning
    fails) and evaluation (`eval_tokens`: a .npz of held-out token ids; a causal LM's perplexity
    before and after, in the report's `perplexity`). `progress()` is called as the work advances.
    Raises InputError for unusable input, VerificationError when the pruned model fails the masked reference.
    """
    keywords = {name: value for name, value in locals().items() if name not in ("model_or_path", "progress")}
    return run_prune(model_or_path, PruneConfig.from_keywords(**keywords), progress)


def run_prune(
    model_or_path: ModelLike, config: PruneConfig, progress: Progress = None, log: Callable[[str], None] | None = None
) -> PruneResult:
    """The prune pipeline for `config`, stage by stage (see `prune`); `log` gets the distillation's
    progress lines (`recover='kd'`)."""
    config.validate()
    analysis = prepare(model_or_path, config)
    evaluation = config.evaluation.open(analysis.model, config.calibration.batch_size)
    data = config.calibration.load(analysis.model, config.seed)
    scores = score_groups(analysis, config.selection.criterion, config.seed, data, progress)
    search, ridge = config.allocation.search, config.recovery.ridge
    evaluate = candidate_evaluator(analysis, data, search, config.seed, ridge, progress)
    plan, allocation = plan_pruning(
        analysis, scores, config.select_options(), config.allocation, data, config.seed, progress, evaluate
    )
    plan, rounding = round_plan(analysis, scores, plan, config, progress)
    verified = apply_and_verify(analysis, plan, config)
    recovered = reconstruct_layers(analysis, verified, data, config, progress)
    distilled = distill_layers(analysis, verified, data, config, progress, log)
    perplexity = evaluation.compare(analysis.model, verified.applied.model) if evaluation else None
    result = assemble(analysis, verified, config, data, allocation, rounding, recovered, perplexity)
    if distilled is not None:
        record_distillation(result, distilled)
    return result


def prepare(model_or_path: ModelLike, config: PruneConfig) -> Analysis:
    """Load and analyze the model, refuse one with nothing to prune, choose the verification shapes."""
    analysis = load_and_analyze(model_or_path, config.selection.exclude, config.selection.prune_residual)
    require_prunable(analysis)
    require_finite_weights(analysis)
    set_verification_shapes(analysis, config.verification.input_shapes, required=config.verification.enabled)
    return analysis


def round_plan(
    analysis: Analysis, scores: dict, plan: PruningPlan, config: PruneConfig, progress: Progress = None
) -> tuple[PruningPlan, dict | None]:
    """`round_to='auto'`: each pruned group's kept count chosen by timing its layers."""
    if not config.rounding.auto:
        return plan, None
    return auto_round(analysis, scores, plan, config.rounding.options(), progress)


def apply_and_verify(analysis: Analysis, plan: PruningPlan, config: PruneConfig) -> Verified:
    """The pruned model, checked by the full ONNX checker and against the masked reference (failing
    groups frozen unless `strict`)."""
    applied = apply_plan(analysis.model, plan, analysis.view)
    require_valid_model(applied.model, analysis.model)
    if not config.verification.enabled:
        return Verified(plan, applied)
    return verify_or_freeze(analysis, plan, applied, config.seed, config.verification.strict, apply_plan)


def reconstruct_layers(
    analysis: Analysis, verified: Verified, data: CalibrationData | None, config: PruneConfig, progress: Progress = None
) -> Reconstruction | None:
    """Least-squares reconstruction of the verified pruned model (see recover/reconstruct.py)."""
    if not config.recovery.reconstruct:
        return None
    applied = verified.applied
    recovered = reconstruct(
        analysis.model, applied.model, applied.weights, data, config.recovery.ridge, config.seed, progress
    )
    if recovered.applied:
        require_valid_model(recovered.model, analysis.model)
        applied.model = recovered.model
    return recovered


def distill_layers(
    analysis: Analysis,
    verified: Verified,
    data: CalibrationData | None,
    config: PruneConfig,
    progress: Progress = None,
    log: Callable[[str], None] | None = None,
) -> Distillation | None:
    """`recover='kd'`: distill the (reconstructed) pruned model from the input model on the
    calibration images (see recover/distill.py); the model changes only when it agrees better."""
    if config.recovery.method is None or data is None:
        return None
    applied = verified.applied
    options = config.recovery.distill_options(config.seed)
    distilled = distill(analysis.model, applied.model, data, options, log=log, progress=progress)
    if distilled.applied:
        require_valid_model(distilled.model, analysis.model)
        applied.model = distilled.model
    return distilled


def record_distillation(result: PruneResult, distilled: Distillation) -> None:
    """The report's `distillation` entry; the plan file says the weights are no longer exact slices."""
    result.report["distillation"] = distilled.to_dict()
    if distilled.applied:
        result.plan["recovered_distillation"] = {"method": "kd", "steps": distilled.steps}
        for entry in result.plan.get("weights", {}).values():
            entry["exact"] = False


def assemble(
    analysis: Analysis,
    verified: Verified,
    config: PruneConfig,
    data: CalibrationData | None,
    allocation: PlannedAllocation | None,
    rounding: dict | None,
    recovered: Reconstruction | None,
    perplexity: dict | None = None,
) -> PruneResult:
    """The PruneResult: the pruned model, the plan file and the report (`perplexity`: the
    before/after entry of `PerplexityEval.compare`, with `eval_tokens`)."""
    criterion, options = config.selection.criterion, config.record(data)
    report = prune_report(analysis, verified, criterion, options, perplexity)
    if allocation is not None:
        report["allocation"] = allocation_report(allocation, config.allocation, report)
    if rounding is not None:
        report["rounding"] = rounding
    plan_file = plan_document(analysis, verified.plan, verified.applied.weights, criterion, options)
    if verified.applied.io_shapes:  # a KV cache's heads: the pruned model's cache I/O shapes changed
        plan_file["io_shapes"] = verified.applied.io_shapes
    if recovered is not None:
        report["reconstruction"] = recovered.to_dict()
        record_recovery(plan_file, recovered, recovered.ridge)
    return PruneResult(verified.applied.model, plan_file, report, analysis.groups, value_info=analysis.input_value_info)
