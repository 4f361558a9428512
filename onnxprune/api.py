"""The Python API, mirrored by the command line: `prune(...)` and `analyze(...)`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis import ChannelGroup, ModelView, find_groups
from onnxprune.criteria import ScoringContext, get_criterion
from onnxprune.errors import InputError, InternalError, VerificationError
from onnxprune.measure.calibration import load_calibration
from onnxprune.model.io import atomic_write_text, load_model, save_model
from onnxprune.model.simplify_attention import simplify_attention
from onnxprune.model.edit import large_weights_as_inputs
from onnxprune.passes import apply_plan
from onnxprune.report.document import build_report, group_rows, model_summary
from onnxprune.report.plots import kept_per_layer
from onnxprune.select.allocation import (
    Allocation,
    AllocationContext,
    AllocationRequest,
    PlanCost,
    allocate,
)
from onnxprune.select.plan import PruningPlan
from onnxprune.select.selection import SelectOptions, select
from onnxprune.verify.reference import VerifyResult
from onnxprune.verify.reference import verify as verify_masked
from onnxprune.verify.shapes import VerificationShapes, choose_shapes, macs_shapes

PLAN_FORMAT = "onnxprune-plan/1"
ModelLike = str | os.PathLike | onnx.ModelProto


@dataclass
class Analysis:
    """A normalized model, its view and its channel groups."""

    model: onnx.ModelProto
    view: ModelView
    groups: list[ChannelGroup]
    sha256: str
    #: The verification shapes (set by `prune`; see verify_shapes.py) and every tensor's shape at
    #: them, batch 1 (what MACs are counted at; {}: the view's shapes, dynamic dims as 1).
    shapes: "VerificationShapes | None" = None
    macs_shapes: dict = field(default_factory=dict)
    #: Whether the input declared shapes of intermediate tensors (graph.value_info); when it did
    #: not, the output does not either (it would be larger than the input for nothing).
    input_value_info: bool = True


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

    def save(self, path: str | os.PathLike, plan_path: str | os.PathLike | None = None,
             report_path: str | os.PathLike | None = None) -> Path:
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


def default_plan_path(output: Path) -> Path:
    """`<output stem>.plan.json` beside the output."""
    return output.with_name(output.stem + ".plan.json")


def load_and_analyze(source: ModelLike, exclude: tuple[str, ...] = (), prune_residual: bool = False) -> Analysis:
    """Load, normalize and analyze a model (`prune_residual`: LayerNorm channels are prunable)."""
    from onnxprune.model.weight_chains import normalize_keeping_chains

    loaded = load_model(source)
    had_value_info = len(loaded.model.graph.value_info) > 0
    # a file's model is ours to reuse; weight chains (int8 → Cast → Mul, DequantizeLinear, fp16 →
    # Cast) are folded for the analysis and recorded, so the output keeps their stored precision
    model, chains = normalize_keeping_chains(loaded.model, in_place=loaded.path is not None)
    model = simplify_attention(model)  # dynamo's kᵀ round trip through [N·H, T, D] -> one Transpose
    view = ModelView(model, prune_normalized=prune_residual)
    view.weight_chains = chains.matched(model)
    return Analysis(model, view, find_groups(view, tuple(exclude)), loaded.sha256,
                    input_value_info=had_value_info)


def analyze(model_or_path: ModelLike, exclude: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """The channel groups of a model, prunable or frozen with a reason."""
    return load_and_analyze(model_or_path, exclude).groups


def score_groups(analysis: Analysis, criterion: str, seed: int = 0, data=None,
                 progress=None) -> dict[str, np.ndarray]:
    """Scores of every prunable group's channels by the named criterion (`data`: calibration set
    for the data-driven criteria; `progress()` is called once per calibration batch)."""
    scorer = get_criterion(criterion)
    ctx = ScoringContext(analysis.view.consts, analysis.groups, seed, analysis.model, analysis.view,
                         data, progress)
    scorer.check(ctx)
    return {g.id: scorer.score(g, ctx) for g in analysis.groups if g.prunable}


def prune(model_or_path: ModelLike, criterion: str = "l1", ratio: float = 0.5, *,
          min_channels: int = 1, round_to: int | str = 1, scope: str = "local",
          exclude: tuple[str, ...] | list[str] = (), seed: int = 0, verify: bool = True,
          input_shapes: dict[str, tuple] | None = None, calib=None, calib_samples: int | None = 512,
          preprocess: str | None = None, batch_size: int = 64, progress=None,
          target_flops=None, target_params=None, target_latency=None, allocate: str | None = None,
          layerwise: dict | str | None = None, samples: int = 64, jobs: int = 1,
          reconstruct: bool = False, ridge: float = 1e-4, round_ep: str = "cpu",
          round_batch: int = 1, prune_residual: bool = False, strict: bool = False) -> PruneResult:
    """Prune `ratio` of the channels of every prunable group, chosen by `criterion`.

    Data-driven criteria need `calib`: a .npz/.npy file or an image folder (see `calib.py`), of
    which `calib_samples` samples are used, preprocessed by `preprocess`.

    With a target (`target_flops`/`target_params`: a fraction like 0.5 or an absolute '2.1G';
    `target_latency`: milliseconds on ONNX Runtime CPU), `allocate` (default 'uniform'; also
    'global', 'sensitivity', 'random-search' with `samples`/`jobs`) chooses each group's ratio;
    `allocate='layerwise'` applies `layerwise` (a dict or a JSON/YAML file: group id or layer
    name -> ratio) exactly.

    `reconstruct` (needs `calib`) refits the kept columns and bias of every pruned consumer layer
    by least squares (ridge `ridge`) to the unpruned model's layer outputs, after verification;
    the report's `reconstruction` gives the held-out output error before and after.

    `round_to='auto'` chooses every pruned group's kept count by timing its layers on the
    execution provider `round_ep` ('cpu', 'cuda', 'tensorrt') at batch `round_batch` (see
    rounding.py); the report's `rounding` gives the timing tables.

    `prune_residual` also prunes the channels LayerNorms normalize over (a transformer's residual
    stream), consistently in every LayerNorm, projection and embedding; those LayerNorms then
    normalize over the kept channels (verified against a reference that does the same).

    Verification runs at `input_shapes` where given, else at shapes chosen from the model (see
    verify_shapes.py; the report's `verification.shapes` says which and why); MACs are counted
    there at batch 1. The tolerance is calibrated from the model's float noise (noise.py). When
    the pruned model fails, the groups responsible are found by bisection and frozen (report
    `verification.failed_groups`) and the rest is pruned and verified; `strict=True` refuses
    instead.

    Raises InputError for unusable input and VerificationError when the pruned model does not
    match the masked reference (nothing is returned then).
    """
    request = AllocationRequest(target_flops, target_params, target_latency, allocate, layerwise, samples, jobs)
    auto_round = _check_round_to(round_to, round_batch, round_ep, request)
    options = SelectOptions(ratio, min_channels, 1 if auto_round else round_to, scope)
    options.validate()
    _check_reconstruct_options(reconstruct, ridge, calib)
    get_criterion(criterion)
    analysis = load_and_analyze(model_or_path, tuple(exclude), prune_residual)
    require_prunable(analysis)
    require_finite_weights(analysis)
    set_verification_shapes(analysis, input_shapes, required=verify)
    data = load_calibration(calib, analysis.model, calib_samples, preprocess, batch_size, seed) if calib else None
    scores = score_groups(analysis, criterion, seed, data, progress)
    plan, allocation = plan_pruning(analysis, scores, options, request, data, seed, progress)
    rounding = None
    if auto_round:
        from onnxprune.select.rounding import AutoRoundOptions
        from onnxprune.select.rounding import auto_round as round_counts

        plan, rounding = round_counts(analysis, scores, plan, AutoRoundOptions(round_ep, round_batch), progress)
    applied = apply_plan(analysis.model, plan, analysis.view)
    _check_model(applied.model, analysis.model)
    failed = []
    check = verify_masked(analysis.model, applied.model, plan, seed, analysis.shapes.verify_shapes(),
                          analysis.view) if verify else None
    if check is not None and not check.ok:
        if strict:
            raise VerificationError(_verify_message(check))
        plan, applied, check, failed = _freeze_failing_groups(analysis, plan, check, seed)
    recovered = _reconstruct(analysis, applied, data, ridge, seed, progress) if reconstruct else None
    if recovered is not None and recovered.applied:
        _check_model(recovered.model, analysis.model)
        applied.model = recovered.model
    option_dict = {"ratio": ratio, "min_channels": min_channels, "round_to": round_to,
                   "scope": scope, "exclude": list(exclude), "seed": seed, "prune_residual": prune_residual,
                   "calib": str(calib) if calib else None, "calib_samples": data.samples if data else None,
                   "shapes": {name: list(shape) for name, shape in (input_shapes or {}).items()}}
    pruned_view = ModelView(applied.model)
    pruned_shapes = macs_shapes(applied.model, analysis.shapes.shapes)
    report = build_report(model_summary(analysis.model, analysis.view, analysis.macs_shapes),
                          model_summary(applied.model, pruned_view, pruned_shapes),
                          group_rows(analysis.groups, analysis.view, plan, pruned_view,
                                     analysis.macs_shapes, pruned_shapes),
                          criterion, option_dict,
                          verification_report(check, analysis.shapes, failed) if check else None)
    report["shapes"] = analysis.shapes.to_dict()
    if allocation is not None:
        report["allocation"] = allocation_report(allocation, request, report)
    if rounding is not None:
        report["rounding"] = rounding
    plan_file = plan_document(analysis, plan, applied.weights, criterion, option_dict)
    if recovered is not None:
        report["reconstruction"] = recovered.to_dict(ridge)
        _record_recovery(plan_file, recovered, ridge)
    return PruneResult(applied.model, plan_file, report, analysis.groups, value_info=analysis.input_value_info)


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
    analysis.macs_shapes = macs_shapes(analysis.model, analysis.shapes.shapes)


def _freeze_failing_groups(analysis: Analysis, plan: PruningPlan, check: VerifyResult, seed: int):
    """Bisect for the groups whose pruning fails verification, freeze them with the reason, and
    prune the rest: (plan, applied, passing check, [FailedGroup]). VerificationError when no
    pruned group is left or the final model still fails."""
    from onnxprune.verify.bisect import find_failing_groups

    shapes = analysis.shapes.verify_shapes()
    fixed, fixed_view = _static_copy(analysis, shapes)

    def verify_plan(partial: PruningPlan) -> VerifyResult:
        applied = apply_plan(fixed, partial, fixed_view)
        return verify_masked(fixed, applied.model, partial, seed, shapes, fixed_view, noise=check.noise)

    failed, plan, _ = find_failing_groups(plan, verify_plan)
    for culprit in failed:
        next(g for g in analysis.groups if g.id == culprit.id).frozen = culprit.reason
    if not any(plan.is_pruned(g) for g in analysis.groups):
        raise VerificationError(_verify_message(check, "; pruning any of its groups fails verification"))
    applied = apply_plan(analysis.model, plan, analysis.view)
    _check_model(applied.model, analysis.model)
    final = verify_masked(analysis.model, applied.model, plan, seed, shapes, analysis.view, noise=check.noise)
    if not final.ok:
        raise VerificationError(_verify_message(final, f" after freezing {len(failed)} failing groups"))
    return plan, applied, final, failed


def _static_copy(analysis: Analysis, shapes: dict) -> tuple[onnx.ModelProto, ModelView]:
    """The normalized model with its graph inputs fixed to the verification shapes and shapes
    inferred there (static shapes make each bisection step's apply fast), and its view; the
    analysis' own when no input dim is dynamic."""
    from onnxprune.model.shapes import infer_shapes

    if not analysis.shapes.is_dynamic:
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


def verification_report(check: VerifyResult, shapes: VerificationShapes, failed: list) -> dict:
    """The report's `verification`: difference, noise, tolerance (per output and the worst), how
    the noise was measured, the shapes verified at, the groups frozen because they failed."""
    entry = check.to_dict()
    entry["shapes"] = shapes.to_dict()
    entry["failed_groups"] = [f.to_dict() for f in failed]
    return entry


def _check_round_to(round_to, round_batch: int, round_ep: str, request: "AllocationRequest") -> bool:
    """True for round_to='auto' (which works on a --ratio plan, not on a target's allocation)."""
    if round_to != "auto":
        if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)):
            raise InputError(f"--round-to must be a positive integer or 'auto', got '{round_to}'")
        return False
    if request.active:
        raise InputError("--round-to auto cannot be combined with a target or --allocate (rounding up would "
                         "move the result off the target); use --ratio, or an integer --round-to")
    if not isinstance(round_batch, int) or round_batch < 1:
        raise InputError(f"--round-batch must be a positive integer, got {round_batch}")
    from onnxprune.bench.providers import resolve_ep

    resolve_ep(round_ep)  # before the work: a missing provider is a clear error now
    return True


def _check_reconstruct_options(reconstruct: bool, ridge: float, calib) -> None:
    if reconstruct and not calib:
        raise InputError("--reconstruct needs calibration data: add --calib PATH (.npz/.npy or an image folder)")
    if not (ridge >= 0 and np.isfinite(ridge)):
        raise InputError(f"--ridge must be a finite number >= 0, got {ridge}")


def _reconstruct(analysis: Analysis, applied, data, ridge: float, seed: int, progress):
    """Least-squares reconstruction of the verified pruned model (see recover/reconstruct.py)."""
    from onnxprune.recover import reconstruct

    return reconstruct(analysis.model, applied.model, applied.weights, data, ridge, seed, progress)


def _record_recovery(plan_file: dict, recovered, ridge: float) -> None:
    """The plan says which tensors reconstruction changed: they are no longer exact slices."""
    if not recovered.applied:
        return
    plan_file["recovered"] = {"method": "least-squares", "layers": recovered.layers, "ridge": ridge}
    for name, shape in recovered.changed.items():
        entry = plan_file["weights"].setdefault(name, {"shape": list(shape), "kept": {}})
        entry["exact"] = False
        entry["recovered"] = "least-squares"


@dataclass
class PlannedAllocation(Allocation):
    """A strategy's Allocation with what the report needs: the fraction of output channels each
    producer layer keeps (network order) and the budget's value as the strategy measured it."""

    layers: list[dict] = field(default_factory=list)
    achieved: float | None = None


def plan_pruning(analysis: Analysis, scores: dict, options: SelectOptions, request: "AllocationRequest",
                 data=None, seed: int = 0, progress=None):
    """The plan: plain selection at `options.ratio`, or a strategy's allocation for a target
    or a layerwise map. Returns (plan, PlannedAllocation or None)."""
    if not request.active:
        return select(analysis.groups, scores, options), None
    cost = PlanCost(analysis, analysis.macs_shapes)
    budget = request.budget(cost, analysis)
    measure = _memoized(request.latency_meter(analysis))
    ctx = AllocationContext(analysis, scores, budget, options, cost, measure, data,
                            seed, request.samples, request.jobs, request.layerwise_map(), progress)
    result = allocate(ctx, request.strategy)
    layers = kept_per_layer(analysis.view.graph.node, analysis.groups, result.plan.kept)
    achieved = ctx.value(result.plan) if budget is not None else None
    return result.plan, PlannedAllocation(result.plan, result.ratios, result.history, layers, achieved)


def _memoized(measure):
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


def allocation_report(result, request: "AllocationRequest", report: dict) -> dict:
    """What the strategy did: target vs achieved, each group's ratio, the fraction of channels each
    layer keeps (network order), the search history."""
    entry = {"strategy": request.strategy, "ratios": result.ratios, "layers": getattr(result, "layers", None),
             "history": result.history}
    if request.kind:
        budget = request.resolved
        achieved = {"flops": report["after"]["macs"], "params": report["after"]["params"]}.get(
            request.kind, getattr(result, "achieved", None))
        entry["target"] = {**budget.to_dict(), "achieved": achieved}
    return entry


def _checker_error(model: onnx.ModelProto) -> str | None:
    """The full ONNX checker's complaint about a model, or None when it passes (large weights are
    checked as typed inputs: the checker would serialize them, and refuses models over 2 GB)."""
    try:
        onnx.checker.check_model(large_weights_as_inputs(model), full_check=True)
    except Exception as exc:  # the checker raises several types
        return str(exc).strip().splitlines()[0][:200]
    return None


def _check_model(pruned: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """The pruned model must pass the full ONNX checker. `source` is the normalized model it was
    made from: the input passed the checks at load and normalization is checked too, so a
    pruned model that fails is our error (InternalError), unless `source` fails the checker the
    same way (the input's own quirk, which ONNX Runtime accepts: the pruned model is no worse;
    checked only then: the checker serializes the whole model)."""
    problem = _checker_error(pruned)
    if problem is None or _checker_error(source) is not None:
        return
    raise InternalError(f"internal error: pruning produced an invalid model ({problem}); it was not written; "
                        "please report it")


def require_prunable(analysis: Analysis) -> None:
    """InputError when every channel group is frozen (the model was loaded and checked already:
    the reason is the analysis', never the validity of the input)."""
    groups = analysis.groups
    if any(g.prunable for g in groups):
        return
    hidden = _layers_in_subgraphs(analysis.model.graph)
    if hidden and not any(m.role == "out" for g in groups for m in g.members):
        names = ", ".join(f"{n.op_type} '{n.name or n.output[0]}'" for n in hidden[:3])
        more = f" and {len(hidden) - 3} more" if len(hidden) > 3 else ""
        raise InputError(f"the model has no prunable channel group: its layers sit inside the "
                         f"subgraphs of {names}{more} (layers inside If/Loop/Scan bodies are not pruned)")
    reasons = sorted({g.frozen for g in groups if g.frozen})
    detail = f"; e.g. {reasons[0]}" if reasons else ""
    raise InputError(f"the model has no prunable channel group ({len(groups)} frozen{detail})")


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "ConvInteger", "MatMulInteger")


def _layers_in_subgraphs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The main-graph nodes (If/Loop/Scan) whose subgraphs, at any depth, hold a layer."""
    def holds_layer(node: onnx.NodeProto) -> bool:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            if any(n.op_type in LAYER_OPS or holds_layer(n) for body in bodies for n in body.node):
                return True
        return False
    return [node for node in graph.node if holds_layer(node)]


def require_finite_weights(analysis: Analysis) -> None:
    """InputError when a weight of a prunable group holds NaN or Inf: its channels cannot be scored
    and the verification would compare NaN with NaN."""
    names = {m.space.tensor for g in analysis.groups if g.prunable for m in g.members}
    for name in sorted(names):
        value = analysis.view.consts.get(name)
        if value is not None and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise InputError(f"weight '{name}' holds NaN or Inf values; channel scores need finite weights")


def _verify_message(check: VerifyResult, detail: str = "") -> str:
    worst = check.worst()
    return (f"verification failed: output '{worst.name}' differs from the masked reference by "
            f"{worst.relative:.3g} (relative; float noise {worst.noise:.2g}, tolerance {worst.tolerance:.2g})"
            f"{detail}; the model was not written")


def plan_document(analysis: Analysis, plan: PruningPlan, weights: dict, criterion: str, options: dict) -> dict:
    """The plan file (format `onnxprune-plan/1`, see DESIGN.md): `weights` names tensors of the
    input only (a weight chain's stored int8/fp16 tensors, not the float weight normalization
    folded them into); what the output holds sliced under another name is under `derived`."""
    groups = []
    for group in analysis.groups:
        kept = plan.kept.get(group.id, np.arange(group.channels))
        entry = group.to_dict()
        entry["kept"] = [int(k) for k in kept]
        groups.append(entry)
    document = {"format": PLAN_FORMAT, "input_sha256": analysis.sha256, "criterion": criterion,
                "options": options, "weights": weights, "groups": groups}
    chains = analysis.view.weight_chains
    if chains is not None:
        document["weights"], derived = chains.split_derived(weights)
        if derived:
            document["derived"] = derived
    return document

