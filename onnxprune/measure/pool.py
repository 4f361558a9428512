"""The one process pool of the streaming measurement (measure/engine.py), shared by the sensitivity
study and the data-driven allocation strategies.

`measure_work` splits the work into `jobs` interleaved shares (share i holds items i, i + jobs, …)
and measures each in a spawned process with its own ONNX Runtime session and data stream, rebuilt
from a picklable `MeasureSpec`; every number is computed exactly as in one process, so the results
are the same. The workers' progress steps (one per batch and item) are forwarded to the caller.
A script that measures with jobs > 1 needs `if __name__ == "__main__":` (processes are spawned).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import onnx

from onnxprune.analysis.analyze import Analysis, load_and_analyze
from onnxprune.measure.calibration import CalibrationData, Preprocess, load_calibration
from onnxprune.measure.engine import Sums, Work, measure
from onnxprune.measure.gated import GatedModel
from onnxprune.model.view import ModelView

#: Largest model (bytes) sent to worker processes; a larger one is re-read from its file by each
#: worker, or, without a file, measured in this process.
MAX_SHARED_MODEL = 1 << 30


@dataclass(frozen=True)
class MeasureSpec:
    """What a worker rebuilds its gated model and calibration stream from (picklable): the normalized
    model (serialized, or the path of its file, analyzed again), its channel groups, the calibration
    set's source and settings, and the ONNX Runtime threads of the worker's session (0: default)."""

    model: bytes | str
    groups: tuple
    calib: str
    samples: int
    preprocess: Preprocess | str | None
    batch_size: int
    seed: int
    threads: int = 0

    @classmethod
    def of(cls, analysis: Analysis, data: CalibrationData, threads: int = 0, source=None) -> MeasureSpec | None:
        """The spec of a measurement of `analysis` on `data` (`source`: the file the model was
        loaded from, if any); None when the model is too large to send and has no file."""
        if analysis.model.ByteSize() < MAX_SHARED_MODEL:
            model = analysis.model.SerializeToString()
        elif isinstance(source, (str, os.PathLike)):
            model = os.fspath(source)
        else:
            return None
        return cls(
            model,
            tuple(analysis.groups),
            str(data.source),
            data.samples,
            data.preprocess,
            data.batch_size,
            data.seed,
            threads,
        )

    def open(self) -> tuple[GatedModel, CalibrationData]:
        """The gated model and the calibration stream, rebuilt in this process."""
        if isinstance(self.model, bytes):
            model = onnx.load_from_string(self.model)
            view = ModelView(model)
        else:
            analysis = load_and_analyze(self.model)
            model, view = analysis.model, analysis.view
        gated = GatedModel(model, list(self.groups), view, threads=self.threads)
        data = load_calibration(self.calib, model, self.samples, self.preprocess, self.batch_size, self.seed)
        return gated, data


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def measure_work(
    analysis: Analysis,
    data: CalibrationData,
    work: Work,
    jobs: int = 1,
    progress: Callable[[], None] | None = None,
    source=None,
) -> Sums:
    """Measure `work` on `data` (see engine.measure), in `jobs` processes when there are several
    items; `progress()` is called once per (batch, item)."""
    jobs = min(jobs, len(work))
    spec = MeasureSpec.of(analysis, data, max(1, cores() // jobs), source) if jobs > 1 else None
    if spec is None:
        gated = GatedModel(analysis.model, analysis.groups, analysis.view)
        return measure(gated, data, work, progress)
    return Sums.merge(run_parallel(spec, [work[i::jobs] for i in range(jobs)], progress))


#: A worker's end of the progress queue (set by `_init_worker` in each worker process).
_PROGRESS_QUEUE: Any = None


def _init_worker(progress_queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


def _worker(spec: MeasureSpec, work: Work) -> Sums:
    """Entry point of a worker process: its own session and data stream."""
    gated, data = spec.open()
    return measure(gated, data, work, lambda: _PROGRESS_QUEUE.put(1))


def run_parallel(spec: MeasureSpec, shares: list[Work], progress: Callable | None) -> list[Sums]:
    """Measure each share in its own spawned process, forwarding their progress steps. A SimpleQueue
    writes each step to its pipe before the worker returns, so no step arrives after its result."""
    context = multiprocessing.get_context("spawn")
    steps = context.SimpleQueue()
    with ProcessPoolExecutor(len(shares), mp_context=context, initializer=_init_worker, initargs=(steps,)) as pool:
        futures = [pool.submit(_worker, spec, share) for share in shares]
        pending = set(futures)
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
