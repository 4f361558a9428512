"""Channel-importance criteria: a registry of classes that score each channel of a group."""

from onnxprune.criteria.base import (
    CRITERIA,
    Criterion,
    ScoringContext,
    get_criterion,
    group_scores,
    register,
)

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "get_criterion", "group_scores", "register"]
