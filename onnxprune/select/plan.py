"""The pruning plan: which channels each group keeps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import ChannelGroup


@dataclass
class PruningPlan:
    """The channels each group keeps (sorted channel ids); groups absent from `kept` are untouched."""

    groups: list[ChannelGroup]
    kept: dict[str, np.ndarray]

    def kept_count(self, group: ChannelGroup) -> int:
        """Channels the group keeps."""
        return len(self.kept[group.id]) if group.id in self.kept else group.channels

    def is_pruned(self, group: ChannelGroup) -> bool:
        """True when the group loses channels."""
        return self.kept_count(group) < group.channels
