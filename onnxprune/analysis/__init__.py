"""Channel-dependency analysis: which channels of which tensors must be pruned together."""

from onnxprune.analysis.groups import ChannelGroup, find_groups
from onnxprune.analysis.relations import Space, WeightUse
from onnxprune.analysis.rules.registry import RULES, OpRule, rule
from onnxprune.model.view import ModelView

__all__ = ["ChannelGroup", "ModelView", "OpRule", "RULES", "Space", "WeightUse", "find_groups", "rule"]
