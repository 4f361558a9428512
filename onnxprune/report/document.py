"""The pruning report: FLOPs (MACs) and parameters before → after, per group and in total, and a
language model's perplexity before → after on held-out tokens (`--eval-tokens`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxprune.analysis import ChannelGroup, ModelView
from onnxprune.analysis.cost import group_macs, model_macs
from onnxprune.passes.apply_plan import cache_slices
from onnxprune.select.plan import PruningPlan
from onnxprune.verify.shapes import macs_shapes
from onnxprune.verify.verification import Verified, verification_report

if TYPE_CHECKING:
    from onnxprune.analysis.analyze import Analysis


def model_summary(model, view: ModelView | None = None, shapes: dict | None = None) -> dict:
    """Total MACs and parameters of a model (a weight chain such as int8 → Cast → Mul counts as
    the weight it yields; `shapes`: every tensor's shape at the verification
    shape, batch 1, see analysis/cost.py; else dynamic dims count as 1)."""
    view = view or ModelView(model)
    return {"macs": sum(model_macs(view, shapes).values()), "params": view.param_count()}


def group_rows(
    groups: list[ChannelGroup],
    view: ModelView,
    plan: PruningPlan | None = None,
    pruned: ModelView | None = None,
    shapes: dict | None = None,
    pruned_shapes: dict | None = None,
) -> list[dict]:
    """One row per group: channels, MACs of its layers and parameters of its weights (before,
    and after when the pruned model's view is given), share of the model's MACs, frozen reason.
    `shapes` / `pruned_shapes`: tensor shapes at the verification shape (see model_summary)."""
    macs = model_macs(view, shapes)
    macs_after = model_macs(pruned, pruned_shapes) if pruned else None
    total = max(sum(macs.values()), 1)
    rows = []
    for group in groups:
        row = group.to_dict()
        row["kept"] = plan.kept_count(group) if plan else group.channels
        row["macs"] = group_macs(group, macs)
        row["macs_share"] = row["macs"] / total
        row["params"] = _member_params(group, view)
        if pruned is not None and macs_after is not None:
            row["macs_after"] = group_macs(group, macs_after)
            row["params_after"] = _member_params(group, pruned)
        rows.append(row)
    return rows


def _member_params(group: ChannelGroup, view: ModelView) -> int:
    """Elements of the weight tensors that hold the group's channels (each tensor once)."""
    names = {m.space.tensor for m in group.members}
    return int(sum(_const_size(view, n) for n in names if view.is_const(n)))


def _const_size(view: ModelView, name: str) -> int:
    """Elements of a constant, from its static shape when known (a big weight is not read)."""
    shape = view.shape(name)
    if shape is not None and all(isinstance(d, (int, np.integer)) for d in shape):
        return int(np.prod(shape, dtype=np.int64))
    return int(np.asarray(view.value(name)).size)


def prunable_share(groups: list[ChannelGroup], view: ModelView, shapes: dict | None = None) -> float:
    """Share of the model's MACs in layers that touch at least one prunable group."""
    macs = model_macs(view, shapes)
    nodes = {m.node for g in groups if g.prunable for m in g.members if m.role in ("out", "in")}
    return sum(macs.get(n, 0) for n in nodes) / max(sum(macs.values()), 1)


def build_report(
    before: dict, after: dict, rows: list[dict], criterion: str, options: dict, verification: dict | None
) -> dict:
    """The JSON report of one pruning run."""
    return {
        "criterion": criterion,
        "options": options,
        "before": before,
        "after": after,
        "macs_ratio": after["macs"] / before["macs"] if before["macs"] else 1.0,
        "params_ratio": after["params"] / before["params"] if before["params"] else 1.0,
        "groups": rows,
        "verification": verification,
    }


def prune_report(
    analysis: Analysis, verified: Verified, criterion: str, options: dict, perplexity: dict | None = None
) -> dict:
    """The report of a prune run: MACs and parameters before → after, the groups, the options, the
    verification (when it ran) and the shapes it ran at, and the perplexity before → after when it
    was measured (`measure.perplexity.PerplexityEval.compare`: before, after, ratio, tokens, source)."""
    pruned = verified.applied.model
    pruned_view = ModelView(pruned)
    shapes = analysis.verification_shapes()
    pruned_shapes = macs_shapes(pruned, cache_slices(analysis.model, verified.plan).shapes(shapes.shapes))
    rows = group_rows(analysis.groups, analysis.view, verified.plan, pruned_view, analysis.macs_shapes, pruned_shapes)
    check = verified.check
    report = build_report(
        model_summary(analysis.model, analysis.view, analysis.macs_shapes),
        model_summary(pruned, pruned_view, pruned_shapes),
        rows,
        criterion,
        options,
        verification_report(check, shapes, verified.failed) if check else None,
    )
    report["shapes"] = shapes.to_dict()
    if verified.applied.io_shapes:  # a KV cache's heads: its inputs/outputs declare the new count
        report["io_shapes"] = verified.applied.io_shapes
    if perplexity is not None:
        report["perplexity"] = perplexity
    return report
