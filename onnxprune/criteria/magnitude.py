"""Criteria computed from the weights alone: l1, l2, fpgm, bn_scale, random."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Criterion, group_scores, register


@register
class L1(Criterion):
    """Sum of absolute filter weights (Li et al., "Pruning Filters for Efficient ConvNets")."""

    name = "l1"
    description = "L1 norm of each channel's filter"

    def score(self, group, ctx):
        return group_scores(group, ctx, lambda rows: np.abs(rows).sum(axis=1))


@register
class L2(Criterion):
    """Euclidean norm of each filter."""

    name = "l2"
    description = "L2 norm of each channel's filter"

    def score(self, group, ctx):
        return group_scores(group, ctx, lambda rows: np.sqrt((rows * rows).sum(axis=1)))


def geometric_median_distance(rows: np.ndarray) -> np.ndarray:
    """For each row, the sum of its Euclidean distances to all other rows (He et al., FPGM).

    Rows near the geometric median are replaceable by the others and score low.
    """
    squared = (rows * rows).sum(axis=1)
    gram = rows @ rows.T
    dist2 = np.maximum(squared[:, None] + squared[None, :] - 2.0 * gram, 0.0)
    return np.sqrt(dist2).sum(axis=1)


@register
class FPGM(Criterion):
    """Filter pruning via geometric median: prune filters closest to the others' geometric median."""

    name = "fpgm"
    description = "distance of each filter to the geometric median of its layer"

    def score(self, group, ctx):
        return group_scores(group, ctx, geometric_median_distance)


@register
class BNScale(Criterion):
    """|gamma| of the BatchNormalization after each channel (network slimming).

    Groups without a BatchNormalization (e.g. a Linear layer's hidden features) are scored by L1.
    """

    name = "bn_scale"
    description = "|scale| of the channel's BatchNormalization (l1 where a group has none)"

    def check(self, ctx):
        if not any(m.role == "bn_scale" for g in ctx.groups for m in g.members):
            raise InputError("criterion bn_scale needs BatchNormalization nodes, but this model has "
                             "none (its exporter folded them into the convolutions); use l1, l2 or fpgm")

    def score(self, group, ctx):
        if group.members_with("bn_scale"):
            return group_scores(group, ctx, lambda rows: np.abs(rows).sum(axis=1), ("bn_scale",))
        return group_scores(group, ctx, lambda rows: np.abs(rows).sum(axis=1))


@register
class Random(Criterion):
    """Uniformly random scores, seeded by `seed` and the group's position (reproducible)."""

    name = "random"
    description = "random channels (seeded with --seed)"

    def score(self, group, ctx):
        index = int(group.id.lstrip("g") or 0)
        return np.random.default_rng([ctx.seed, index]).random(group.channels)
