"""Re-check a stored pruned model against its original and plan, long after pruning.

`check_pruned` reads the original model, confirms it is the plan's input (SHA-256), rebuilds the
plan's channel selection on the original's channel groups, and then checks two things:

* every weight the plan marks as an exact slice equals ``original[np.ix_(kept...)]``;
* the pruned model computes what the original computes with the pruned channels masked
  (`verify.py`'s masked reference), on seeded random inputs and optionally calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis import ModelView
from onnxprune.analysis.analyze import analyze_loaded
from onnxprune.errors import InputError
from onnxprune.measure.calibration import load_calibration
from onnxprune.model.inputs import random_inputs
from onnxprune.model.io import load_model
from onnxprune.model.runtime import run_model
from onnxprune.model.tensors import tensor_value
from onnxprune.passes.apply_plan import cache_slices, pruned_atoms
from onnxprune.select.plan import plan_shapes, read_plan, rebuild_plan
from onnxprune.verify.bounded_outputs import bounded_outputs
from onnxprune.verify.compare import OutputCheck
from onnxprune.verify.masked_norm import masked_norm_reference
from onnxprune.verify.noise import measure_noise
from onnxprune.verify.reference import compare, masked_weights
from onnxprune.verify.shapes import choose_shapes


@dataclass
class CheckResult:
    """The outcome of a re-check: per-output differences over all inputs, weight slices that differ."""

    outputs: dict[str, OutputCheck] = field(default_factory=dict)
    bad_weights: list[str] = field(default_factory=list)
    batches: int = 0
    recovered: str | None = None
    noise_method: str | None = None
    shapes: str = ""

    @property
    def max_relative(self) -> float:
        """The largest relative output difference seen (inf when an output is not finite; 0 without outputs)."""
        return max((_rank(o) for o in self.outputs.values()), default=0.0)

    @property
    def ok(self) -> bool:
        """True when every exact weight is an exact slice and (unless recovered) every output matches."""
        outputs_ok = self.recovered is not None or all(o.ok for o in self.outputs.values())
        return not self.bad_weights and outputs_ok

    def add(self, checks) -> None:
        """Merge one batch's comparison, keeping each output's worst relative difference."""
        self.batches += 1
        for check in checks.outputs:
            seen = self.outputs.get(check.name)
            if seen is None or _rank(check) > _rank(seen):
                self.outputs[check.name] = check


def _rank(check: OutputCheck) -> float:
    """Relative difference, inf when not finite (NaN included)."""
    value = check.relative
    return float(value) if np.isfinite(value) and np.isfinite(check.max_abs_diff) else float("inf")


def sliced_weights_differ(
    view: ModelView, pruned: onnx.ModelProto, weights: dict, source: onnx.ModelProto | None = None
) -> list[str]:
    """Names of plan weights marked exact whose pruned value is not `original[np.ix_(kept...)]`.
    Originals are the tensors of `source` (the input as loaded: initializers and `Constant`
    tensors, which the plan names; stored int8/fp16 tensors of weight chains included), else of
    the normalized model's view."""

    def tensors(model: onnx.ModelProto) -> dict:
        found = {init.name: init for init in model.graph.initializer}
        for node in model.graph.node:
            value = (
                next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
            )
            if value is not None and node.output:
                found[node.output[0]] = value
        return found

    originals = tensors(source) if source is not None else None
    stored = tensors(pruned)
    bad = []
    for name, entry in sorted(weights.items()):
        if entry.get("exact") is False:
            continue
        original = (
            view.consts.get(name)
            if originals is None
            else (tensor_value(originals[name]) if name in originals else None)
        )
        init = stored.get(name)
        if original is None or init is None or list(original.shape) != entry.get("shape"):
            bad.append(name)
            continue
        value = tensor_value(init)
        if value.dtype != original.dtype or not _same(value, _plan_slice(original, entry["kept"], name)):
            bad.append(name)
    return bad


def _plan_slice(value: np.ndarray, kept: dict, name: str) -> np.ndarray:
    """`value[np.ix_(kept...)]`; InputError when the plan's indices do not fit the weight."""
    try:
        index = [np.asarray(kept.get(str(a), range(n)), dtype=np.int64).reshape(-1) for a, n in enumerate(value.shape)]
        if any(len(i) and (i.min() < 0 or i.max() >= n) for i, n in zip(index, value.shape)):
            raise IndexError
        return value[np.ix_(*index)]
    except (TypeError, ValueError, IndexError):
        raise InputError(f"the plan's weight '{name}' keeps indices outside its shape {list(value.shape)}") from None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and values (NaN equal to NaN for floating types)."""
    floating = np.issubdtype(a.dtype, np.inexact) and np.issubdtype(b.dtype, np.inexact)
    return np.array_equal(a, b, equal_nan=floating)


def check_pruned(
    pruned_path,
    original_path,
    plan_path,
    seed: int = 0,
    runs: int = 3,
    calib=None,
    calib_samples: int = 64,
    preprocess: str | None = None,
) -> CheckResult:
    """Re-run the masked-reference check of a stored pruned model (see the module docstring).

    `runs` batches of seeded random inputs (seeds seed, seed+1, ...) and, with `calib`, up to
    `calib_samples` calibration samples. Raises InputError when the files do not belong together.
    """
    plan_doc = read_plan(Path(plan_path))
    original = load_model(original_path)
    if plan_doc.get("input_sha256") != original.sha256:
        raise InputError(f"{original_path} is not the model this plan was made from (SHA-256 differs)")
    pruned = load_model(pruned_path).model
    options = plan_doc.get("options") or {}
    analysis = analyze_loaded(original, tuple(options.get("exclude") or ()), bool(options.get("prune_residual")))
    model, view = analysis.model, analysis.view
    plan = rebuild_plan(analysis.groups, plan_doc)
    result = CheckResult(recovered=(plan_doc.get("recovered") or {}).get("method"))
    result.bad_weights = sliced_weights_differ(view, pruned, plan_doc["weights"], original.model)
    arrays = masked_weights(view, plan)  # the other weights are the model's own
    reference_model = masked_norm_reference(model, pruned_atoms(plan), view)  # --prune-residual
    shapes = choose_shapes(model, plan_shapes(options))  # as `api.prune` chose them
    result.shapes, noise = shapes.describe(), None
    bounded = bounded_outputs(model)  # sigmoid outputs: judged on their range and by their logits
    reference_model = bounded.expose(reference_model)
    cache = cache_slices(model, plan)  # a KV cache's kept heads: the pruned model's cache I/O
    for feeds in _feeds(model, seed, runs, calib, calib_samples, preprocess, shapes.verify_shapes()):
        raw = run_model(reference_model, feeds, arrays=arrays)
        reference = cache.arrays(bounded.judge(raw))
        if noise is None:  # the tolerance is calibrated once, on the first batch (as `prune` does)
            noise = measure_noise(reference_model, arrays, feeds, raw, bounded.judge)
            result.noise_method = noise.method
        got = run_model(bounded.expose(pruned), cache.arrays(feeds))
        result.add(compare(bounded.judge(got), reference, noise))
    return result


def _feeds(model: onnx.ModelProto, seed: int, runs: int, calib, samples: int, preprocess, shapes=None):
    for run in range(runs):
        yield random_inputs(model, seed + run, shapes=shapes)
    if calib:
        data = load_calibration(calib, model, samples, preprocess, 32, seed)
        for feeds, _ in data.batches():
            yield feeds


def summary_line(result: CheckResult, pruned_name: str) -> str:
    """One line: PASS or FAIL, what was compared and the largest relative difference."""
    verdict = "PASS" if result.ok else "FAIL"
    worst = max(result.outputs.values(), key=lambda o: _rank(o) / o.tolerance, default=None)
    noise = (
        f"float noise {worst.noise:.2g} ({result.noise_method}), tolerance {worst.tolerance:.2g}"
        if worst is not None
        else "no outputs"
    )
    detail = f"max relative difference {result.max_relative:.3g} ({noise}) over {result.batches} batches" + (
        f" at {result.shapes}" if result.shapes else ""
    )
    if result.bad_weights:
        names = ", ".join(result.bad_weights[:3]) + (" ..." if len(result.bad_weights) > 3 else "")
        return (
            f"{verdict}: {pruned_name}: {len(result.bad_weights)} weights are not the plan's slices ({names}); {detail}"
        )
    if result.recovered:
        return (
            f"{verdict}: {pruned_name}: exact weights match the plan; weights refitted by {result.recovered} "
            f"differ from the masked reference by design ({detail})"
        )
    failed = [o for o in result.outputs.values() if not o.ok]
    if failed:
        worst = max(failed, key=_rank)
        return f"{verdict}: {pruned_name}: output '{worst.name}' differs from the masked original; {detail}"
    return f"{verdict}: {pruned_name} computes the masked original; {detail}"
