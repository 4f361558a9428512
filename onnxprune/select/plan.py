"""The pruning plan (which channels each group keeps) and the plan file: the one module that
writes (`plan_document`, `record_recovery`) and reads (`read_plan`, `rebuild_plan`) the
`onnxprune-plan/1` format described in DESIGN.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.errors import InputError

if TYPE_CHECKING:
    from onnxprune.analysis.analyze import Analysis

#: The plan file's format tag (see DESIGN.md).
PLAN_FORMAT = "onnxprune-plan/1"


@dataclass
class PruningPlan:
    """The channels each group keeps (sorted channel ids); groups absent from `kept` are untouched."""

    groups: list[ChannelGroup]
    kept: dict[str, np.ndarray]

    def kept_count(self, group: ChannelGroup) -> int:
        """Channels the group keeps."""
        return len(self.kept[group.id]) if group.id in self.kept else group.channels

    def is_pruned(self, group: ChannelGroup) -> bool:
        """True when the group loses channels."""
        return self.kept_count(group) < group.channels


def default_plan_path(output: Path) -> Path:
    """`<output stem>.plan.json` beside the output."""
    return output.with_name(output.stem + ".plan.json")


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
    document = {
        "format": PLAN_FORMAT,
        "input_sha256": analysis.sha256,
        "criterion": criterion,
        "options": options,
        "weights": weights,
        "groups": groups,
    }
    chains = analysis.view.weight_chains
    if chains is not None:
        document["weights"], derived = chains.split_derived(weights)
        if derived:
            document["derived"] = derived
    return document


def record_recovery(plan_file: dict, recovered, ridge: float) -> None:
    """The plan says which tensors reconstruction changed: they are no longer exact slices."""
    if not recovered.applied:
        return
    plan_file["recovered"] = {"method": "least-squares", "layers": recovered.layers, "ridge": ridge}
    for name, shape in recovered.changed.items():
        entry = plan_file["weights"].setdefault(name, {"shape": list(shape), "kept": {}})
        entry["exact"] = False
        entry["recovered"] = "least-squares"


def read_plan(path: Path) -> dict:
    """The plan file, or InputError when it is missing or not an onnxprune plan."""
    if not path.is_file():
        raise InputError(f"{path}: no such plan file (give it with {{plan}})", parameter="plan")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON plan file ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise InputError(f"{path}: not an {PLAN_FORMAT} plan file")
    groups, weights = plan.get("groups"), plan.get("weights")
    if (
        not isinstance(groups, list)
        or not isinstance(weights, dict)
        or not all(isinstance(g, dict) and isinstance(g.get("kept", []), list) for g in groups)
        or not all(isinstance(w, dict) and isinstance(w.get("kept"), dict) for w in weights.values())
    ):
        raise InputError(f"{path}: damaged plan file ('groups' and 'weights' are not as onnxprune writes them)")
    return plan


def rebuild_plan(groups, plan: dict) -> PruningPlan:
    """The PruningPlan that `plan`'s groups describe, on the original model's channel groups."""
    by_id = {g.id: g for g in groups}
    kept = {}
    for entry in plan["groups"]:
        group = by_id.get(entry.get("id"))
        if (
            group is None
            or group.channels != entry.get("channels")
            or sorted({str(m.space) for m in group.members}) != entry.get("members")
        ):
            raise InputError(
                f"the plan's group {entry.get('id')!r} does not match the original model's channel "
                "groups (different model or onnxprune version)"
            )
        try:
            chosen = np.asarray(entry.get("kept", []), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"the plan's group {group.id!r} has kept channels that are not integers") from None
        if len(chosen) < group.channels:
            if chosen.size and (chosen.min() < 0 or chosen.max() >= group.channels):
                raise InputError(f"the plan's group {group.id!r} keeps channels outside 0..{group.channels - 1}")
            kept[group.id] = np.unique(chosen)
    return PruningPlan(groups, kept)


def plan_shapes(options: dict) -> dict | None:
    """The --shape values the plan was made with (options 'shapes'), as tuples."""
    shapes = options.get("shapes") or {}
    try:
        return {str(name): tuple(int(d) for d in dims) for name, dims in shapes.items()} or None
    except (AttributeError, TypeError, ValueError):
        raise InputError("damaged plan file (options 'shapes' is not a map of input name to dims)") from None
