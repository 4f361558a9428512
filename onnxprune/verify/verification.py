"""The verification stage of `prune`: choose the shapes to verify at, check the pruned model
against the masked reference, and when it fails find the responsible groups by bisection, freeze
them and verify the rest; plus the report's `verification` entry and the full-checker guard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from onnxprune.errors import InputError, InternalError, VerificationError, short_message
from onnxprune.model.edit import large_weights_as_inputs
from onnxprune.model.shapes import infer_shapes
from onnxprune.model.view import ModelView
from onnxprune.select.plan import PruningPlan
from onnxprune.verify.bisect import FailedGroup, find_failing_groups
from onnxprune.verify.reference import VerifyResult, verify
from onnxprune.verify.shapes import VerificationShapes, choose_shapes, macs_shapes

if TYPE_CHECKING:
    from onnxprune.analysis.analyze import Analysis
    from onnxprune.passes.apply_plan import AppliedPlan

#: `apply_plan`'s signature: (normalized model, plan, view) -> AppliedPlan.
ApplyFn = Callable[..., "AppliedPlan"]


@dataclass
class Verified:
    """The outcome of the verification stage: the plan and pruned model that passed (after
    freezing any failing groups), the passing check (None when verification is off), the groups
    frozen because pruning them failed."""

    plan: PruningPlan
    applied: AppliedPlan
    check: VerifyResult | None = None
    failed: list[FailedGroup] = field(default_factory=list)


def set_verification_shapes(analysis: Analysis, input_shapes: dict | None, required: bool = True) -> None:
    """Choose the verification shapes (probing ONNX Runtime when needed) and infer every tensor's
    shape there for the MACs. `required=False` (no verification): when no probed size runs, the
    MACs are counted at the first candidates."""
    try:
        analysis.shapes = choose_shapes(analysis.model, input_shapes)
    except InputError:
        if required:
            raise
        analysis.shapes = choose_shapes(analysis.model, input_shapes, probe=False)
    analysis.macs_shapes = macs_shapes(analysis.model, analysis.verification_shapes().shapes)


def verify_or_freeze(
    analysis: Analysis, plan: PruningPlan, applied: AppliedPlan, seed: int, strict: bool, apply: ApplyFn
) -> Verified:
    """Verify the pruned model; when it fails, refuse (`strict`) or freeze the failing groups
    (found by bisection, each step pruned by `apply`) and verify the rest."""
    check = verify(
        analysis.model, applied.model, plan, seed, analysis.verification_shapes().verify_shapes(), analysis.view
    )
    if check.ok:
        return Verified(plan, applied, check)
    if strict:
        raise VerificationError(failure_message(check))
    return freeze_failing_groups(analysis, plan, check, seed, apply)


def freeze_failing_groups(
    analysis: Analysis, plan: PruningPlan, check: VerifyResult, seed: int, apply: ApplyFn
) -> Verified:
    """Bisect for the groups whose pruning fails verification, freeze them with the reason, and
    prune the rest. VerificationError when no pruned group is left or the final model still fails."""
    shapes = analysis.verification_shapes().verify_shapes()
    fixed, fixed_view = static_copy(analysis, shapes)

    def verify_plan(partial: PruningPlan) -> VerifyResult:
        return verify(
            fixed, apply(fixed, partial, fixed_view).model, partial, seed, shapes, fixed_view, noise=check.noise
        )

    failed, plan, _ = find_failing_groups(plan, verify_plan)
    for culprit in failed:
        next(g for g in analysis.groups if g.id == culprit.id).frozen = culprit.reason
    if not any(plan.is_pruned(g) for g in analysis.groups):
        raise VerificationError(failure_message(check, "; pruning any of its groups fails verification"))
    applied = apply(analysis.model, plan, analysis.view)
    require_valid_model(applied.model, analysis.model)
    final = verify(analysis.model, applied.model, plan, seed, shapes, analysis.view, noise=check.noise)
    if not final.ok:
        raise VerificationError(failure_message(final, f" after freezing {len(failed)} failing groups"))
    return Verified(plan, applied, final, failed)


def static_copy(analysis: Analysis, shapes: dict) -> tuple[onnx.ModelProto, ModelView]:
    """The normalized model with its graph inputs fixed to the verification shapes and shapes
    inferred there (static shapes make each bisection step's apply fast), and its view; the
    analysis' own when no input dim is dynamic."""
    if not analysis.verification_shapes().is_dynamic:
        return analysis.model, analysis.view
    fixed = onnx.ModelProto()
    fixed.CopyFrom(analysis.model)
    for info in fixed.graph.input:
        if info.name in shapes:
            for dim, size in zip(info.type.tensor_type.shape.dim, shapes[info.name]):
                dim.Clear()
                dim.dim_value = int(size)
    fixed = infer_shapes(fixed)
    return fixed, ModelView(fixed, prune_normalized=analysis.view.prune_normalized)


def verification_report(check: VerifyResult, shapes: VerificationShapes, failed: list[FailedGroup]) -> dict:
    """The report's `verification`: difference, noise, tolerance (per output and the worst), how
    the noise was measured, the shapes verified at, the groups frozen because they failed."""
    entry = check.to_dict()
    entry["shapes"] = shapes.to_dict()
    entry["failed_groups"] = [f.to_dict() for f in failed]
    return entry


def failure_message(check: VerifyResult, detail: str = "") -> str:
    """The VerificationError's message: the worst output, its difference, noise and tolerance."""
    if check.error is not None:
        return (
            f"verification failed: ONNX Runtime cannot run the pruned model ({check.error}){detail}; "
            "the model was not written (the input model runs: this is onnxprune's fault, please report it)"
        )
    worst = check.worst()
    return (
        f"verification failed: output '{worst.name}' differs from the masked reference by "
        f"{worst.relative:.3g} (relative; float noise {worst.noise:.2g}, tolerance {worst.tolerance:.2g})"
        f"{detail}; the model was not written"
    )


def checker_error(model: onnx.ModelProto) -> str | None:
    """The full ONNX checker's complaint about a model, or None when it passes (large weights are
    checked as typed inputs: the checker would serialize them, and refuses models over 2 GB)."""
    try:
        onnx.checker.check_model(large_weights_as_inputs(model), full_check=True)
    except Exception as exc:  # the checker raises several types
        return short_message(exc)
    return None


def require_valid_model(pruned: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """The pruned model must pass the full ONNX checker. `source` is the normalized model it was
    made from: the input passed the checks at load and normalization is checked too, so a
    pruned model that fails is our error (InternalError), unless `source` fails the checker the
    same way (the input's own quirk, which ONNX Runtime accepts: the pruned model is no worse;
    checked only then: the checker serializes the whole model)."""
    problem = checker_error(pruned)
    if problem is None or checker_error(source) is not None:
        return
    raise InternalError(
        f"internal error: pruning produced an invalid model ({problem}); it was not written; please report it"
    )
