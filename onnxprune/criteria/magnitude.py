"""Criteria computed from the weights alone: l1, l2, fpgm, bn_scale, random."""

from __future__ import annotations

import numpy as np

from onnxprune.criteria.base import Criterion, group_scores, register
from onnxprune.errors import InputError


def l1_rows(rows: np.ndarray) -> np.ndarray:
    """Sum of absolute values of each row."""
    return np.abs(rows).sum(axis=1)


def l2_rows(rows: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row."""
    return np.sqrt((rows * rows).sum(axis=1))


def geometric_median_distance(rows: np.ndarray) -> np.ndarray:
    """For each row, the sum of its Euclidean distances to all other rows (He et al., FPGM).

    Rows near the geometric median are replaceable by the others and score low.
    """
    squared = (rows * rows).sum(axis=1)
    gram = rows @ rows.T
    dist2 = np.maximum(squared[:, None] + squared[None, :] - 2.0 * gram, 0.0)
    return np.sqrt(dist2).sum(axis=1)


class FilterCriterion(Criterion):
    """A criterion that scores each filter (row of a producer weight) with `row_score`."""

    roles: tuple[str, ...] = ("out",)

    @staticmethod
    def row_score(rows: np.ndarray) -> np.ndarray:
        """One score per row of a member matrix."""
        return l1_rows(rows)

    def score(self, group, ctx):
        return group_scores(group, ctx, self.row_score, self.roles)


@register
class L1(FilterCriterion):
    """Sum of absolute filter weights (Li et al., "Pruning Filters for Efficient ConvNets")."""

    name = "l1"
    description = "L1 norm of each channel's filter"


@register
class L2(FilterCriterion):
    """Euclidean norm of each filter."""

    name = "l2"
    description = "L2 norm of each channel's filter"
    row_score = staticmethod(l2_rows)


@register
class FPGM(FilterCriterion):
    """Filter pruning via geometric median: prune filters closest to the others' geometric median."""

    name = "fpgm"
    description = "distance of each filter to the geometric median of its layer"
    row_score = staticmethod(geometric_median_distance)


@register
class BNScale(Criterion):
    """|gamma| of the BatchNormalization after each channel (network slimming).

    Groups without a BatchNormalization (e.g. a Linear layer's hidden features) are scored by L1.
    """

    name = "bn_scale"
    description = "|scale| of the channel's BatchNormalization (l1 where a group has none)"

    def check(self, ctx):
        if not any(m.role == "bn_scale" for g in ctx.groups for m in g.members):
            raise InputError(
                "criterion bn_scale needs BatchNormalization nodes, but this model has "
                "none (its exporter folded them into the convolutions); use l1, l2 or fpgm"
            )

    def score(self, group, ctx):
        roles = ("bn_scale",) if group.members_with("bn_scale") else ("out",)
        return group_scores(group, ctx, l1_rows, roles)


@register
class Random(Criterion):
    """Uniformly random scores, seeded by `seed` and the group's position (reproducible)."""

    name = "random"
    description = "random channels (seeded with --seed)"

    def score(self, group, ctx):
        index = int(group.id.lstrip("g") or 0)
        return np.random.default_rng([ctx.seed, index]).random(group.channels)
