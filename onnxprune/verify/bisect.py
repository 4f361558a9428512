"""One bad group must not sink the model: find the pruned groups whose pruning fails verification.

`find_failing_groups` verifies the plan restricted to the pruned groups still in play; while that
fails, it bisects over prefixes of them (network order) for the first prefix that fails, whose
last group is responsible (pruning the groups before it passes, adding it fails), takes that group
out and starts again. Each culprit costs about log2(groups) + 1 verifications; every step applies
the partial plan and verifies it. The caller freezes the culprits and prunes the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from onnxprune.errors import VerificationError
from onnxprune.select.plan import PruningPlan
from onnxprune.verify.reference import VerifyResult

#: More culprits than this means something systematic is wrong: refuse instead of searching on.
MAX_CULPRITS = 16


@dataclass
class FailedGroup:
    """A group whose pruning failed verification, with the check that showed it."""

    id: str
    check: VerifyResult

    @property
    def reason(self) -> str:
        """The frozen reason: 'pruning it failed verification (max relative difference …)', or
        'pruning it made a model ONNX Runtime cannot run (…)'."""
        if self.check.error is not None:
            return f"pruning it made a model ONNX Runtime cannot run ({self.check.error[:200]})"
        worst = self.check.worst()
        return (
            f"pruning it failed verification (max relative difference {worst.relative:.2g}, "
            f"tolerance {worst.tolerance:.2g})"
        )

    def to_dict(self) -> dict:
        """JSON-ready."""
        worst = self.check.worst()
        return {
            "id": self.id,
            "max_relative": worst.relative,
            "tolerance": worst.tolerance,
            "output": worst.name,
            "reason": self.reason,
        }


def restricted(plan: PruningPlan, group_ids: list[str]) -> PruningPlan:
    """The plan with only the groups `group_ids` pruned (the others keep every channel)."""
    chosen = set(group_ids)
    return PruningPlan(plan.groups, {gid: kept for gid, kept in plan.kept.items() if gid in chosen})


def find_failing_groups(
    plan: PruningPlan, check: Callable[[PruningPlan], VerifyResult], failed: VerifyResult | None = None
) -> tuple[list[FailedGroup], PruningPlan, VerifyResult]:
    """(culprits, the plan without them, its passing check). `check(plan)` applies and verifies
    a plan; `failed` is the full plan's failing check when already known. Raises
    VerificationError when the unpruned model itself does not verify or culprits exceed MAX_CULPRITS."""
    remaining = [g.id for g in plan.groups if plan.is_pruned(g)]
    culprits: list[FailedGroup] = []
    result = failed if failed is not None else check(restricted(plan, remaining))
    if not result.ok and remaining:
        empty = check(restricted(plan, []))
        if not empty.ok:  # the rewrite is wrong even with nothing pruned: no group is to blame
            raise VerificationError(_give_up_message(empty, [], []))
    while not result.ok:
        if not remaining or len(culprits) >= MAX_CULPRITS:
            raise VerificationError(_give_up_message(result, culprits, remaining))
        index, shown = _first_failing_prefix(plan, remaining, check, result)
        culprits.append(FailedGroup(remaining.pop(index), shown))
        result = check(restricted(plan, remaining))
    return culprits, restricted(plan, remaining), result


def _first_failing_prefix(plan: PruningPlan, groups: list[str], check, full: VerifyResult):
    """(index of the group whose addition makes the prefix fail, that prefix's check), given
    that pruning none of `groups` passes and `full`, the check of all of them, fails."""
    passing, failing, shown = 0, len(groups), full  # prefix lengths: passing passes, failing fails
    while failing - passing > 1:
        middle = (passing + failing) // 2
        result = check(restricted(plan, groups[:middle]))
        if result.ok:
            passing = middle
        else:
            failing, shown = middle, result
    return failing - 1, shown


def _give_up_message(result: VerifyResult, culprits: list[FailedGroup], remaining: list[str]) -> str:
    worst = result.worst()
    detail = (
        f"output '{worst.name}' differs from the masked reference by {worst.relative:.3g} "
        f"(relative; tolerance {worst.tolerance:.2g})"
    )
    if not remaining and not culprits:
        return f"verification failed: {detail} with no channel pruned; the model was not written"
    return (
        f"verification failed: {detail}; more than {MAX_CULPRITS} groups fail verification when "
        "pruned; the model was not written"
    )
