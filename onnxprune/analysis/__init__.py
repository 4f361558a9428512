"""Channel-dependency analysis: which channels of which tensors must be pruned together."""

from .groups import ChannelGroup, find_groups
from .model_view import ModelView
from .registry import RULES, OpRule, rule
from .relations import Space, WeightUse

__all__ = ["ChannelGroup", "ModelView", "OpRule", "RULES", "Space", "WeightUse", "find_groups", "rule"]
