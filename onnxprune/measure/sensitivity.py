"""Per-group sensitivity: prune each prunable group *alone* at several ratios and measure, on
calibration data, how much the first output moves (relative L2 change over the whole set) and the
top-1 accuracy when labels are available.

Pruning is simulated with `GatedModel`: gating a channel to 0 in front of every consumer computes
exactly what removing it computes, so one ONNX Runtime session serves every (group, ratio). The
data are streamed: batches are the outer loop (each batch is decoded once), and per batch the
reference output is computed once, then every gated run adds to running sums of squares.
`jobs > 1` splits the groups across processes, each with its own session.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from onnxprune.analysis.analyze import (
    Analysis,
    ModelLike,
    load_and_analyze,
    require_prunable,
)
from onnxprune.criteria import get_criterion
from onnxprune.criteria.scoring import score_groups
from onnxprune.errors import InputError
from onnxprune.measure.calibration import CalibrationData, load_calibration
from onnxprune.measure.gated import GatedModel, keep_gate
from onnxprune.model.io import atomic_write_bytes, atomic_write_text
from onnxprune.report.document import group_rows
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
        return {"id": self.id, "name": self.name, "channels": self.channels,
                "macs_share": self.macs_share, "ratios": [asdict(p) for p in self.points]}


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
        return {"format": FORMAT, "model": self.model, "calib": self.calib, "criterion": self.criterion,
                "calib_samples": self.calib_samples, "output": self.output,
                "output_change": "||y - y0|| / ||y0|| over the calibration set (first output)",
                "ratios": list(self.ratios), "baseline_top1": self.baseline_top1,
                "groups": [g.to_dict() for g in self.groups]}

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG: output change vs ratio (and top-1 vs ratio with labels), one line per group."""
        buffer = io.BytesIO()
        plot_figure(self).savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        return path


@dataclass
class _Sums:
    """Running sums of one measurement: squared norms, differences and correct predictions."""

    reference_sq: float = 0.0
    reference_correct: int = 0
    samples: int = 0
    labelled: bool = True
    diff_sq: dict[str, np.ndarray] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)

    def add_reference(self, reference: np.ndarray, labels: np.ndarray | None) -> None:
        """Add one batch of unpruned outputs."""
        self.reference_sq += float(np.sum(np.square(reference, dtype=np.float64)))
        self.samples += reference.shape[0]
        self.labelled = self.labelled and labels is not None
        if labels is not None:
            self.reference_correct += _correct(reference, labels)

    def add(self, gid: str, index: int, output: np.ndarray, reference: np.ndarray, labels) -> None:
        """Add one batch of the group `gid` gated at ratio number `index`."""
        diff = output.astype(np.float64) - reference
        self.diff_sq[gid][index] += float(np.sum(diff * diff))
        if labels is not None:
            self.correct[gid][index] += _correct(output, labels)


def _correct(output: np.ndarray, labels: np.ndarray) -> int:
    return int(np.sum(output.reshape(output.shape[0], -1).argmax(axis=1) == labels))


def _top1_labels(output: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
    """Labels usable for top-1 of a [N, K, (1...)] output, else None."""
    if labels is None or output.ndim < 2 or labels.shape != (output.shape[0],):
        return None
    return labels.astype(np.int64)


def measure(gated: GatedModel, data: CalibrationData, plans: Plans,
            progress: Callable[[], None] | None = None) -> _Sums:
    """Stream the calibration set once through `gated`: per batch the reference output, then every
    (group, kept set) of `plans`; `progress()` is called once per (batch, group)."""
    output = gated.outputs[0]
    sums = _Sums(diff_sq={gid: np.zeros(len(k)) for gid, k in plans},
                 correct={gid: np.zeros(len(k), np.int64) for gid, k in plans})
    for feeds, labels in data.batches():
        reference = gated.run(feeds)[output].astype(np.float64)
        labels = _top1_labels(reference, labels)
        sums.add_reference(reference, labels)
        for gid, kept_sets in plans:
            channels = gated.groups[gid].channels
            for index, result in enumerate(_gated_outputs(gated, feeds, gid, channels, kept_sets, reference)):
                sums.add(gid, index, result, reference, labels)
            if progress:
                progress()
    return sums


def _gated_outputs(gated: GatedModel, feeds: dict, gid: str, channels: int, kept_sets: list[np.ndarray],
                   reference: np.ndarray):
    """The first output with group `gid` keeping each kept set in turn; nothing is run for a set
    that keeps every channel or repeats the previous one."""
    previous_key, previous = None, reference
    for kept in kept_sets:
        key = kept.tobytes()
        if len(kept) == channels:
            previous_key, previous = key, reference
        elif key != previous_key:
            previous_key = key
            previous = gated.run(feeds, {gid: keep_gate(channels, kept)})[gated.outputs[0]]
        yield previous


def kept_channels(group, scores: np.ndarray, ratio: float) -> np.ndarray:
    """The channels `select` keeps when this group alone is pruned at `ratio` (local scope)."""
    plan = select([group], {group.id: scores}, SelectOptions(ratio))
    return plan.kept.get(group.id, np.arange(group.channels))


def parse_ratios(text: str) -> list[float]:
    """'0.1,0.2,0.5' -> [0.1, 0.2, 0.5]; InputError unless every ratio is in [0, 1)."""
    try:
        ratios = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InputError(f"--ratios: cannot read '{text}' (expected e.g. 0.1,0.3,0.5)") from None
    return check_ratios(ratios)


def check_ratios(ratios) -> list[float]:
    """The ratios as a list of floats; InputError when empty or outside [0, 1)."""
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise InputError(f"--ratios must be in [0, 1), got {ratios or 'none'}")
    return ratios


@dataclass
class _Job:
    """The work of one process: what it loads and which groups it measures."""

    source: ModelLike
    calib: str
    samples: int
    preprocess: object
    batch_size: int
    seed: int
    plans: Plans
    threads: int


_PROGRESS_QUEUE = None


def _init_worker(progress_queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


def _worker(job: _Job) -> _Sums:
    """Entry point of a worker process: its own analysis, session and data stream."""
    analysis = load_and_analyze(job.source)
    gated = GatedModel(analysis.model, analysis.groups, analysis.view, threads=job.threads or 0)
    data = load_calibration(job.calib, analysis.model, job.samples, job.preprocess, job.batch_size, job.seed)
    return measure(gated, data, job.plans, lambda: _PROGRESS_QUEUE.put(1))


def _run_parallel(jobs: list[_Job], progress: Callable | None) -> list[_Sums]:
    """Run the jobs in spawned processes, forwarding their progress steps. A SimpleQueue writes
    each step to its pipe before the worker returns, so no step arrives after its result."""
    context = multiprocessing.get_context("spawn")
    steps = context.SimpleQueue()
    with ProcessPoolExecutor(len(jobs), mp_context=context, initializer=_init_worker,
                             initargs=(steps,)) as pool:
        pending = futures = [pool.submit(_worker, job) for job in jobs]
        while pending:
            pending = wait(pending, timeout=0.05).not_done
            _forward(steps, progress)
        return [f.result() for f in futures]


def _forward(steps, progress: Callable | None) -> None:
    """Pass the queued progress steps on to `progress`."""
    while not steps.empty():
        steps.get()
        if progress:
            progress()


def _merge(parts: list[_Sums]) -> _Sums:
    """One set of sums from processes that measured disjoint groups on the same data."""
    merged = parts[0]
    for part in parts[1:]:
        merged.diff_sq.update(part.diff_sq)
        merged.correct.update(part.correct)
    return merged


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
    def prepare(cls, model_or_path: ModelLike, calib, *, ratios=DEFAULT_RATIOS, criterion: str = "l1",
                calib_samples: int | None = 512, preprocess=None, batch_size: int = 64, jobs: int = 1,
                seed: int = 0, progress=None) -> "SensitivityStudy":
        """Check the options, analyze the model, open the data and score the channels once."""
        ratios = check_ratios(ratios)
        _check_counts(jobs, batch_size)
        get_criterion(criterion)
        analysis = load_and_analyze(model_or_path)
        require_prunable(analysis)
        data = load_calibration(calib, analysis.model, calib_samples, preprocess, batch_size, seed)
        scores = score_groups(analysis, criterion, seed, data, progress)
        plans = [(g.id, [kept_channels(g, scores[g.id], r) for r in ratios])
                 for g in analysis.groups if g.prunable]
        return cls(model_or_path, analysis, data, ratios, criterion, plans, jobs)

    @property
    def steps(self) -> int:
        """Progress steps of `run()`: one per (calibration batch, group)."""
        return self.data.num_batches * len(self.plans)

    def run(self, progress: Callable | None = None) -> SensitivityResult:
        """Measure every (group, ratio); `progress()` is called once per (batch, group)."""
        jobs = min(self.jobs, len(self.plans))
        if jobs == 1:
            gated = GatedModel(self.analysis.model, self.analysis.groups, self.analysis.view)
            sums = measure(gated, self.data, self.plans, progress)
        else:
            sums = _merge(_run_parallel([self._job(self.plans[i::jobs], jobs) for i in range(jobs)], progress))
        return self._result(sums)

    def _job(self, plans: Plans, jobs: int) -> _Job:
        data = self.data
        threads = max(1, _cores() // jobs)
        return _Job(self.source, str(data.source), data.samples, data.preprocess, data.batch_size,
                    data.seed, plans, threads)

    def _result(self, sums: _Sums) -> SensitivityResult:
        rows = {row["id"]: row for row in group_rows(self.analysis.groups, self.analysis.view)}
        labelled = sums.labelled
        groups = [GroupSensitivity(gid, rows[gid]["name"], rows[gid]["channels"], rows[gid]["macs_share"],
                                   self._points(sums, gid, kept_sets, labelled))
                  for gid, kept_sets in self.plans]
        return SensitivityResult(groups, self.ratios, self.criterion, self.data.samples,
                                 self.analysis.model.graph.output[0].name,
                                 sums.reference_correct / sums.samples if labelled else None,
                                 None if hasattr(self.source, "graph") else str(self.source),
                                 str(self.data.source))

    def _points(self, sums: _Sums, gid: str, kept_sets: list[np.ndarray], labelled: bool) -> list[RatioPoint]:
        return [RatioPoint(ratio, len(kept), _relative(sums.diff_sq[gid][i], sums.reference_sq),
                           float(sums.correct[gid][i] / sums.samples) if labelled else None)
                for i, (ratio, kept) in enumerate(zip(self.ratios, kept_sets))]


def _cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _relative(diff_sq: float, reference_sq: float) -> float:
    if reference_sq > 0:
        return float(math.sqrt(diff_sq / reference_sq))
    return 0.0 if diff_sq == 0 else float("inf")


def _check_counts(jobs: int, batch_size: int) -> None:
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")


def analyze_sensitivity(model_or_path: ModelLike, calib, *, ratios=DEFAULT_RATIOS, criterion: str = "l1",
                        calib_samples: int | None = 512, preprocess=None, batch_size: int = 64,
                        jobs: int = 1, progress=None, seed: int = 0) -> SensitivityResult:
    """Prune every prunable group alone at each ratio (channels chosen by `criterion`, selected as
    `select`'s local scope does) and measure, over `calib_samples` samples of `calib` (a .npz/.npy
    file or an image folder, see `calib.py`), the relative L2 change of the first output and the
    top-1 accuracy when labels are available. `jobs` processes share the groups (started with
    'spawn': a script that calls this with jobs > 1 needs `if __name__ == "__main__":`);
    `progress()` is called per scoring batch (data-driven criteria) and per (batch, group) measured.
    """
    study = SensitivityStudy.prepare(model_or_path, calib, ratios=ratios, criterion=criterion,
                                     calib_samples=calib_samples, preprocess=preprocess,
                                     batch_size=batch_size, jobs=jobs, seed=seed, progress=progress)
    return study.run(progress)


def plot_figure(result: SensitivityResult):
    """A matplotlib Figure (Agg canvas, no pyplot state): output change vs ratio, and top-1 vs ratio
    when labels were available; one line per group, legend with the groups' names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if result.baseline_top1 is not None else 1
    figure = Figure(figsize=(6.5 * panels + 3.5, 6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for index, group in enumerate(result.groups):
        style = _line_style(index, len(result.groups))
        label = f"{group.id} {group.name} ({group.channels} ch, {group.macs_share:.0%} MACs)"
        axes[0].plot(result.ratios, [p.output_change for p in group.points], label=label, **style)
        if panels == 2:
            axes[1].plot(result.ratios, [100 * p.top1 for p in group.points], **style)
    _decorate(axes, result)
    figure.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
                  ncol=max(1, math.ceil(len(result.groups) / 28)))
    figure.tight_layout()
    return figure


def _line_style(index: int, count: int) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return {"color": cmap(index % cmap.N), "linestyle": ("-", "--", ":", "-.")[(index // cmap.N) % 4],
            "marker": "o", "markersize": 3.5, "linewidth": 1.4}


def _decorate(axes, result: SensitivityResult) -> None:
    axes[0].set_title(f"Output change ('{result.output}') when one group is pruned")
    axes[0].set_ylabel("relative L2 change  ||y - y0|| / ||y0||")
    if len(axes) == 2:
        axes[1].axhline(100 * result.baseline_top1, color="black", linestyle="--", linewidth=1,
                        label=f"unpruned {result.baseline_top1:.1%}")
        axes[1].set_title("Top-1 accuracy when one group is pruned")
        axes[1].set_ylabel("top-1 (%)")
    for ax in axes:
        ax.set_xlabel("ratio of the group's channels removed")
        ax.grid(True, alpha=0.3)
    axes[0].figure.suptitle(f"Sensitivity per group: criterion {result.criterion}, "
                            f"{result.calib_samples} calibration samples", fontsize=11)


def summary_table(result: SensitivityResult, columns: int = 5):
    """A rich Table: one row per group, the output change (and top-1) at up to `columns` ratios."""
    from rich.table import Table

    picks = sorted({int(round(i)) for i in np.linspace(0, len(result.ratios) - 1, min(columns, len(result.ratios)))})
    baseline = "" if result.baseline_top1 is None else f"; top-1 in brackets (unpruned {result.baseline_top1:.1%})"
    table = Table(title=f"Output change when each group alone is pruned ({result.criterion}, "
                        f"{result.calib_samples} samples{baseline})", title_justify="left")
    for name in ("id", "first layer", "channels", "MACs share"):
        table.add_column(name, justify="left" if name in ("id", "first layer") else "right")
    for i in picks:
        table.add_column(f"ratio {result.ratios[i]:g}", justify="right")
    for group in result.groups:
        cells = [_cell(group.points[i]) for i in picks]
        table.add_row(group.id, group.name, str(group.channels), f"{group.macs_share:.1%}", *cells)
    return table


def _cell(point: RatioPoint) -> str:
    text = f"{point.output_change:.3f}"
    return text if point.top1 is None else f"{text} [{point.top1:.1%}]"
