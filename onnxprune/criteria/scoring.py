"""The scoring stage: every prunable group's channels scored by a named criterion."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.criteria.base import ScoringContext, get_criterion

if TYPE_CHECKING:
    from onnxprune.analysis.analyze import Analysis


def score_groups(
    analysis: Analysis, criterion: str, seed: int = 0, data=None, progress: Callable | None = None
) -> dict[str, np.ndarray]:
    """Scores of every prunable group's channels by the named criterion (`data`: calibration set
    for the data-driven criteria; `progress()` is called once per calibration batch)."""
    scorer = get_criterion(criterion)
    ctx = ScoringContext(analysis.view.consts, analysis.groups, seed, analysis.model, analysis.view, data, progress)
    scorer.check(ctx)
    return {g.id: scorer.score(g, ctx) for g in analysis.groups if g.prunable}
