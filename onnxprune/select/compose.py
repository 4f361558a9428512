"""Plans in sequence: the plan input → B from the plans input → A and A → B.

Iterative pruning prunes the output of the previous round; each round's plan file speaks of the
round's input. Pruning keeps tensor names, so a tensor sliced by both plans is the same tensor:
its kept indices compose (`first[axis][second[axis]]`), and a group's kept channels compose the
same way, the group of the second plan found by the channel spaces it shares with the first.
"""

from __future__ import annotations

import onnx


def compose_kept(first: list[int] | None, second: list[int] | None) -> list[int] | None:
    """Indices into the input kept by slicing with `first`, then with `second` (None: all)."""
    if first is None or second is None:
        return second if first is None else first
    return [first[i] for i in second]


def _compose_weight(first: dict | None, second: dict | None) -> dict:
    if first is None or second is None:
        return dict(second if first is None else first)  # type: ignore[arg-type]
    axes = sorted(set(first["kept"]) | set(second["kept"]), key=int)
    kept = {axis: compose_kept(first["kept"].get(axis), second["kept"].get(axis)) for axis in axes}
    entry = {**first, **second, "shape": first["shape"], "kept": kept}
    if first.get("exact") is False or second.get("exact") is False:
        entry["exact"] = False
    return entry


def _compose_groups(first: list[dict], second: list[dict]) -> list[dict]:
    later = {member: group for group in second for member in group["members"]}
    groups = []
    for group in first:
        match = next((later[m] for m in group["members"] if m in later), None)
        entry = dict(group)
        if match is not None and group["frozen"] is None:
            entry["kept"] = compose_kept(group["kept"], match["kept"])
            entry["frozen"] = match["frozen"]
        groups.append(entry)
    return groups


def compose_plans(first: dict, second: dict) -> dict:
    """The plan file from the first plan's input to the second plan's output (see the module)."""
    names = list(first["weights"]) + [n for n in second["weights"] if n not in first["weights"]]
    weights = {n: _compose_weight(first["weights"].get(n), second["weights"].get(n)) for n in names}
    document = {**first, **second, "input_sha256": first["input_sha256"], "weights": weights}
    document["groups"] = _compose_groups(first["groups"], second["groups"])
    derived = {**first.get("derived", {}), **second.get("derived", {})}
    if derived:
        document["derived"] = derived
    return document


def input_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of the initializers and Constant outputs of `model`: what a plan's `weights` may name."""
    names = {t.name for t in model.graph.initializer}
    return names | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}


def only_input_tensors(plan: dict, model: onnx.ModelProto) -> dict:
    """`plan` with the `weights` entries that name no tensor of `model` (copies a later round's
    normalization made) moved to `derived`."""
    names = input_tensor_names(model)
    foreign = {n: e for n, e in plan["weights"].items() if n not in names}
    if foreign:
        plan["weights"] = {n: e for n, e in plan["weights"].items() if n in names}
        plan["derived"] = {**plan.get("derived", {}), **foreign}
    return plan
