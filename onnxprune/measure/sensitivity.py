"""Per-group sensitivity: prune each prunable group *alone* at several ratios and measure, on
calibration data, how much the first output moves (relative L2 change over the whole set) and the
top-1 accuracy when labels are available.

The study prepares with the stages `prune` uses (analysis, calibration data, channel scores) and
measures with the streaming measurement of measure/engine.py (one gated ONNX Runtime session for
every (group, ratio), the data decoded once); `jobs > 1` splits the groups across processes
(measure/pool.py). The table and the plot are drawn by report/sensitivity.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxprune.analysis.analyze import (
    Analysis,
    ModelLike,
    load_and_analyze,
    require_prunable,
)
from onnxprune.criteria.base import get_criterion
from onnxprune.criteria.scoring import score_groups
from onnxprune.errors import InputError
from onnxprune.measure.calibration import CalibrationData, load_calibration
from onnxprune.measure.engine import Sums, group_curves
from onnxprune.measure.pool import measure_work
from onnxprune.model.io import atomic_write_text
from onnxprune.report.document import group_rows
from onnxprune.report.sensitivity import save_plot
from onnxprune.select.selection import SelectOptions, select

FORMAT = "onnxprune-sensitivity/1"
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: (group id, kept channel ids per ratio), the work list of the measurement.
Plans = list[tuple[str, list[np.ndarray]]]


@dataclass
class RatioPoint:
    """One group pruned alone at one ratio: channels kept, output change, top-1 (None without labels)."""

    ratio: float
    kept: int
    output_change: float
    top1: float | None


@dataclass
class GroupSensitivity:
    """A prunable group and its sensitivity curve (one point per ratio)."""

    id: str
    name: str
    channels: int
    macs_share: float
    points: list[RatioPoint]

    def to_dict(self) -> dict:
        """A JSON-ready row."""
        return {
            "id": self.id,
            "name": self.name,
            "channels": self.channels,
            "macs_share": self.macs_share,
            "ratios": [asdict(p) for p in self.points],
        }


@dataclass
class SensitivityResult:
    """Sensitivity of every prunable group: `groups` (rows), the baseline top-1 and the settings."""

    groups: list[GroupSensitivity]
    ratios: list[float]
    criterion: str
    calib_samples: int
    output: str
    baseline_top1: float | None
    model: str | None = None
    calib: str | None = None

    def to_dict(self) -> dict:
        """The JSON document (format `onnxprune-sensitivity/1`)."""
        return {
            "format": FORMAT,
            "model": self.model,
            "calib": self.calib,
            "criterion": self.criterion,
            "calib_samples": self.calib_samples,
            "output": self.output,
            "output_change": "||y - y0|| / ||y0|| over the calibration set (first output)",
            "ratios": list(self.ratios),
            "baseline_top1": self.baseline_top1,
            "groups": [g.to_dict() for g in self.groups],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG: output change vs ratio (and top-1 vs ratio with labels), one line per group."""
        return save_plot(self, path)


def kept_channels(group, scores: np.ndarray, ratio: float) -> np.ndarray:
    """The channels `select` keeps when this group alone is pruned at `ratio` (local scope)."""
    plan = select([group], {group.id: scores}, SelectOptions(ratio))
    return plan.kept.get(group.id, np.arange(group.channels))


def parse_ratios(text: str) -> list[float]:
    """'0.1,0.2,0.5' -> [0.1, 0.2, 0.5]; InputError unless every ratio is in [0, 1)."""
    try:
        ratios = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InputError(f"{{ratios}}: cannot read '{text}' (expected e.g. 0.1,0.3,0.5)", parameter="ratios") from None
    return check_ratios(ratios)


def check_ratios(ratios) -> list[float]:
    """The ratios as a list of floats; InputError when empty or outside [0, 1)."""
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise InputError(f"{{ratios}} must be in [0, 1), got {ratios or 'none'}", parameter="ratios")
    return ratios


@dataclass
class SensitivityStudy:
    """A prepared sensitivity run: the analyzed model, the calibration data, and per prunable group
    the channels kept at each ratio. `run()` measures; `steps` is how many progress steps it makes."""

    source: ModelLike
    analysis: Analysis
    data: CalibrationData
    ratios: list[float]
    criterion: str
    plans: Plans
    jobs: int = 1

    @classmethod
    def prepare(
        cls,
        model_or_path: ModelLike,
        calib,
        *,
        ratios=DEFAULT_RATIOS,
        criterion: str = "l1",
        calib_samples: int | None = 512,
        preprocess=None,
        batch_size: int = 64,
        jobs: int = 1,
        seed: int = 0,
        progress=None,
    ) -> SensitivityStudy:
        """Check the options, analyze the model, open the data and score the channels once."""
        ratios = check_ratios(ratios)
        _check_counts(jobs, batch_size)
        get_criterion(criterion)
        analysis = load_and_analyze(model_or_path)
        require_prunable(analysis)
        data = load_calibration(calib, analysis.model, calib_samples, preprocess, batch_size, seed)
        scores = score_groups(analysis, criterion, seed, data, progress)
        plans = [(g.id, [kept_channels(g, scores[g.id], r) for r in ratios]) for g in analysis.groups if g.prunable]
        return cls(model_or_path, analysis, data, ratios, criterion, plans, jobs)

    @property
    def steps(self) -> int:
        """Progress steps of `run()`: one per (calibration batch, group)."""
        return self.data.num_batches * len(self.plans)

    def run(self, progress: Callable | None = None) -> SensitivityResult:
        """Measure every (group, ratio); `progress()` is called once per (batch, group)."""
        sums = measure_work(self.analysis, self.data, group_curves(self.plans), self.jobs, progress, self.source)
        return self._result(sums)

    def _result(self, sums: Sums) -> SensitivityResult:
        rows = {row["id"]: row for row in group_rows(self.analysis.groups, self.analysis.view)}
        groups = [
            GroupSensitivity(
                gid,
                rows[gid]["name"],
                rows[gid]["channels"],
                rows[gid]["macs_share"],
                self._points(sums, gid, kept_sets),
            )
            for gid, kept_sets in self.plans
        ]
        return SensitivityResult(
            groups,
            self.ratios,
            self.criterion,
            self.data.samples,
            self.analysis.model.graph.output[0].name,
            sums.baseline_top1,
            None if hasattr(self.source, "graph") else str(self.source),
            str(self.data.source),
        )

    def _points(self, sums: Sums, gid: str, kept_sets: list[np.ndarray]) -> list[RatioPoint]:
        changes, top1 = sums.output_changes(gid), sums.top1(gid)
        return [
            RatioPoint(ratio, len(kept), changes[i], top1[i])
            for i, (ratio, kept) in enumerate(zip(self.ratios, kept_sets))
        ]


def _check_counts(jobs: int, batch_size: int) -> None:
    if jobs < 1:
        raise InputError(f"{{jobs}} must be at least 1, got {jobs}", parameter="jobs")
    if batch_size < 1:
        raise InputError(f"{{batch_size}} must be at least 1, got {batch_size}", parameter="batch_size")


def analyze_sensitivity(
    model_or_path: ModelLike,
    calib,
    *,
    ratios=DEFAULT_RATIOS,
    criterion: str = "l1",
    calib_samples: int | None = 512,
    preprocess=None,
    batch_size: int = 64,
    jobs: int = 1,
    progress=None,
    seed: int = 0,
) -> SensitivityResult:
    """Prune every prunable group alone at each ratio (channels chosen by `criterion`, selected as
    `select`'s local scope does) and measure, over `calib_samples` samples of `calib` (a .npz/.npy
    file or an image folder, see measure/calibration.py), the relative L2 change of the first output and the
    top-1 accuracy when labels are available. `jobs` processes share the groups (started with
    'spawn': a script that calls this with jobs > 1 needs `if __name__ == "__main__":`);
    `progress()` is called per scoring batch (data-driven criteria) and per (batch, group) measured.
    """
    study = SensitivityStudy.prepare(
        model_or_path,
        calib,
        ratios=ratios,
        criterion=criterion,
        calib_samples=calib_samples,
        preprocess=preprocess,
        batch_size=batch_size,
        jobs=jobs,
        seed=seed,
        progress=progress,
    )
    return study.run(progress)
