"""The criterion registry and the one shared reduction from weight rows to channel scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.analysis import ChannelGroup
from onnxprune.errors import InputError
from onnxprune.registry import Registry

if TYPE_CHECKING:
    from onnxprune.measure.calibration import CalibrationData
    from onnxprune.model.view import ModelView

#: criterion name -> its instance (the built-in criteria modules are listed in `onnxprune/registry.py`)
CRITERIA: Registry[Criterion] = Registry("criterion", parameter="criterion")


@dataclass
class ScoringContext:
    """What a criterion may look at: the weights by name, the seed, every group of the model, and
    for data-driven criteria the model, its view and the calibration data (`cache` keeps what
    several criteria share, e.g. activation statistics)."""

    weights: Mapping[str, np.ndarray]
    groups: list[ChannelGroup]
    seed: int = 0
    model: onnx.ModelProto | None = None
    view: ModelView | None = None
    data: CalibrationData | None = None
    progress: Callable[[], object] | None = None
    cache: dict = field(default_factory=dict)

    def data_inputs(self) -> tuple[onnx.ModelProto, ModelView, CalibrationData]:
        """The model, its view and the calibration data a data-driven criterion reads (the scoring
        stage passes the model and view; `Criterion.check` has refused a missing `data`)."""
        assert self.model is not None and self.view is not None and self.data is not None, "a data-driven context"
        return self.model, self.view, self.data

    def cached(self, key: str, compute):
        """`compute()` once per context."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


class Criterion(ABC):
    """Scores the channels of a group: one number per channel, higher = more important = kept."""

    name: str = ""
    description: str = ""
    needs_data: bool = False

    def check(self, ctx: ScoringContext) -> None:
        """Raise InputError when the criterion cannot be used on this model."""
        if self.needs_data and ctx.data is None:
            raise InputError(f"criterion {self.name} needs calibration data: add {{calib}} PATH", parameter="calib")

    @abstractmethod
    def score(self, group: ChannelGroup, ctx: ScoringContext) -> np.ndarray:
        """Scores of the group's channels, shape (group.channels,)."""


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make a criterion available by its `name`."""
    CRITERIA.add(cls.name, cls())
    return cls


def get_criterion(name: str) -> Criterion:
    """The registered criterion called `name`, or an InputError listing the known ones."""
    return CRITERIA.get_or_fail(name)


RowScore = Callable[[np.ndarray], np.ndarray]


def group_scores(
    group: ChannelGroup, ctx: ScoringContext, row_score: RowScore, roles: tuple[str, ...] = ("out",)
) -> np.ndarray:
    """Reduce per-row scores of the group's weight members to one score per channel.

    Each member is viewed as a matrix (rows = its channel axis, columns = everything else);
    `row_score` gives one value per row; each member's values are divided by their mean so
    layers of different scale weigh the same; a channel's score is the mean over its rows.
    Members with the first of `roles`, else consumer ("in") members, are used.
    """
    members = _unique(group.members_with(*roles)) or _unique(group.members_with("in"))
    return atoms_to_channels(
        group, {m.space: row_score(member_matrix(_weight_values(ctx, m.space.tensor), m.space.axis)) for m in members}
    )


def _weight_values(ctx: ScoringContext, name: str) -> np.ndarray:
    """A member's float values: a packed quantized weight dequantized (`ModelView.weight_values`)."""
    if ctx.view is not None and name in ctx.view.decoded:
        return ctx.view.weight_values(name)
    return ctx.weights[name]


def member_matrix(weight: np.ndarray, axis: int) -> np.ndarray:
    """A weight viewed as (size of `axis`, everything else), in float64."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def _unique(members: list) -> list:
    return list({m.space: m for m in members}.values())


def atoms_to_channels(group: ChannelGroup, values: dict) -> np.ndarray:
    """Per-channel mean of per-atom values given for some of the group's spaces ({Space: array}).

    Each space's values are first divided by their mean, as `group_scores` does for weights, so
    spaces on different scales (a feature-map rank is at most H, and H halves per stage) weigh
    the same and scores of different groups are comparable."""
    total = np.zeros(group.channels)
    count = np.zeros(group.channels)
    for space, per_atom in values.items():
        channels = group.channel_of[space]
        per_atom = np.asarray(per_atom, dtype=np.float64)
        mean = per_atom.mean() if per_atom.size else 0.0
        per_atom = per_atom / mean if mean > 0 else per_atom
        total += np.bincount(channels, per_atom, minlength=group.channels)
        count += np.bincount(channels, minlength=group.channels)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)
