"""`onnxprune prune … --finetune-data`: after pruning (and reconstruction), fine-tune, check that
the result is valid ONNX that runs, and benchmark it against the input model with ONNX Runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.analysis.analyze import load_and_analyze
from onnxprune.bench import compare_latency
from onnxprune.errors import VerificationError
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model

if TYPE_CHECKING:
    from onnxprune.api import PruneResult


def finetune_pruned(
    result: PruneResult,
    source,
    data,
    *,
    epochs: int,
    val=None,
    preprocess=None,
    batch_size: int = 64,
    seed: int = 0,
    teacher: bool = True,
    augment: bool = True,
    log=None,
    original: onnx.ModelProto | None = None,
) -> PruneResult:
    """Fine-tune `result.model` on `data` (distilling from the unpruned `source` when `teacher`),
    then check it and time it against the input; the report gains `finetune` and `latency`.
    With `val` data, a fine-tuned model whose validation top-1 is lower than before fine-tuning
    is not kept (`applied: false`). `original` is `source` as ``load_and_analyze`` returns it, when
    the caller has it already (``--steps`` loads it once for all rounds)."""
    from onnxprune.recover.finetune import finetune

    if original is None:
        original = load_and_analyze(source).model
    tuned = finetune(
        result.model,
        data,
        epochs=epochs,
        val=val,
        preprocess=preprocess,
        augment=augment,
        batch_size=batch_size,
        seed=seed,
        teacher=original if teacher else None,
        log=log,
    )
    model = trained_model(result.model, tuned)
    check_runs(model, _report_shapes(result.report, "shape"))
    applied = not _worse(tuned)
    result.report["finetune"] = {
        "epochs": epochs,
        "data": str(data),
        "teacher": bool(teacher),
        "augment": augment,
        "applied": applied,
        "before": tuned.initial,
        "history": tuned.history,
    }
    if applied:
        result.model = model
        result.plan["recovered_finetune"] = {"method": "fine-tuning", "epochs": epochs, "data": str(data)}
        for entry in result.plan["weights"].values():
            entry["exact"] = False
    result.report["latency"] = latency_report(original, result.model, _report_shapes(result.report, "macs_shape"))
    return result


def trained_model(pruned: onnx.ModelProto, tuned) -> onnx.ModelProto:
    """The pruned graph holding the trained weights under their own names (the names the plan file
    uses), or the torch export when the trained module was not built from this graph (only then is
    the module exported)."""
    if hasattr(tuned.module, "onnx_parameters") and hasattr(tuned.module, "onnx_tensors"):
        from onnxprune.torch.writeback import written_back

        model = written_back(pruned, tuned.module)
        if model is not None:
            return model
    return tuned.exported()


def _report_shapes(report: dict, key: str) -> dict[str, tuple]:
    """The input shapes the prune step verified at (`shape`) or counted MACs at (`macs_shape`,
    batch 1), from its report."""
    return {name: tuple(entry[key]) for name, entry in (report.get("shapes") or {}).items()}


def _worse(tuned) -> bool:
    before, after = tuned.initial or {}, tuned.history[-1] if tuned.history else {}
    return "val_top1" in before and "val_top1" in after and after["val_top1"] < before["val_top1"]


def check_runs(model: onnx.ModelProto, shapes: dict | None = None) -> None:
    """The fine-tuned model must pass the full checker and run in ONNX Runtime (at `shapes`)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker raises several types
        raise VerificationError(f"the fine-tuned model is not valid ONNX ({str(exc).splitlines()[0][:200]})") from None
    run_model(model, random_inputs(model, batch=2, shapes=shapes))


def latency_report(original: onnx.ModelProto, pruned: onnx.ModelProto, shapes: dict | None = None) -> dict:
    """ONNX Runtime CPU median latency at batch 1 (at the verification shape `shapes`), input vs
    final model, measured side by side."""
    feeds = random_inputs(original, batch=1, shapes=shapes)
    before, after = compare_latency([original, pruned], feeds, warmup=5, iters=50)
    return {
        "batch": 1,
        "shapes": {name: list(value.shape) for name, value in feeds.items()},
        "before_ms": before.median_ms,
        "after_ms": after.median_ms,
        "speedup": before.median_ms / after.median_ms if after.median_ms else None,
    }
