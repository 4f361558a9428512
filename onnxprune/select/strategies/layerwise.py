"""`layerwise`: exactly the ratios of a user's map (group id or layer name -> ratio); no target."""

from __future__ import annotations

from onnxprune.analysis import ChannelGroup
from onnxprune.errors import InputError
from onnxprune.select.allocation import STRATEGIES, Allocation, AllocationContext


@STRATEGIES.register("layerwise")
def layerwise(ctx: AllocationContext) -> Allocation:
    """Exactly the ratios of a JSON/YAML map: group id ('g3') or layer name -> ratio."""
    ratios = resolve_layerwise(ctx.layerwise or {}, ctx.analysis.groups)
    return Allocation(ctx.ratios_plan(ratios), ratios, [])


def resolve_layerwise(mapping: dict, groups: list[ChannelGroup]) -> dict[str, float]:
    """Group ids for the keys of a layerwise map (group ids, or the name of a layer in the group)."""
    ratios = {}
    for key, ratio in mapping.items():
        # a layer name means the group of the layer's output channels (a Conv also reads the group
        # before it, and a first layer's name is also the name of the frozen input group)
        matches = (
            [g for g in groups if key == g.id]
            or [g for g in groups if key in {m.node for m in g.members_with("out")}]
            or [g for g in groups if key == g.name or key in {m.node for m in g.members}]
        )
        if not matches:
            raise InputError(f"layerwise: '{key}' names no group or layer (see 'onnxprune analyze')")
        for group in matches:
            if group.frozen:
                raise InputError(f"layerwise: '{key}' is in frozen group {group.id} ({group.frozen})")
            if not 0 <= float(ratio) < 1:
                raise InputError(f"layerwise: ratio of '{key}' must be in [0, 1), got {ratio}")
            ratios[group.id] = float(ratio)
    return ratios
