"""Channel-importance criteria: a registry of classes that score each channel of a group."""

from .base import CRITERIA, Criterion, ScoringContext, get_criterion, group_scores, register
from . import activation, heads, magnitude  # noqa: F401  (register the criteria)

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "get_criterion", "group_scores", "register"]
