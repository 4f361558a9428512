"""ONNX Runtime latency: median/p90/p99 over timed runs, models measured side by side."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxprune.model.runtime import make_session as runtime_session, onnxruntime


@dataclass
class LatencyStats:
    """Latency of one model at one batch size, in milliseconds (`mean_ms`, `min_ms` as cross-checks)."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    batch: int
    mean_ms: float = float("nan")
    min_ms: float = float("nan")
    runs: int = 0

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, seconds: list[float], batch: int) -> LatencyStats:
        """Statistics of timed runs (seconds)."""
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(
            float(np.median(ms)),
            float(np.percentile(ms, 90)),
            float(np.percentile(ms, 99)),
            batch,
            float(ms.mean()),
            float(ms.min()),
            int(ms.size),
        )

    def to_dict(self) -> dict:
        """JSON-ready, with the throughput."""
        return {
            "batch": self.batch,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "runs": self.runs,
            "throughput": self.throughput,
        }


def make_session(model, threads: int = 0, providers: list[str] | tuple[str, ...] | None = None, spin: bool = True):
    """A session for timing: full graph optimizations, the whole model serialized (see
    `model.runtime.make_session`, the one factory)."""
    return runtime_session(
        model, optimize=True, threads=threads, providers=providers, spin=spin, in_memory=False, log_level=3
    )


def plain_runner(session, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """One inference per call: numpy inputs in, numpy outputs out (host copies are timed)."""
    return lambda: session.run(None, feeds)


def io_binding_runner(
    session, feeds: dict[str, np.ndarray], device_type: str = "cpu", device_id: int = 0
) -> Callable[[], object]:
    """One inference per call with IO binding: the inputs are copied to the device once, outputs
    stay there, so host<->device transfers are not timed (on a GPU the call waits for the outputs)."""
    ort = onnxruntime()
    binding = session.io_binding()
    keep = []  # the bound OrtValues must outlive the binding
    for name, array in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device_type, device_id)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, device_type, device_id)
    return _BoundRun(session, binding, keep, synchronize=device_type != "cpu")


@dataclass(eq=False)
class _BoundRun:
    """One inference with an IO binding per call; holds the bound input OrtValues (`inputs`), which
    must outlive the binding."""

    session: Any  # onnxruntime objects
    binding: Any
    inputs: list
    synchronize: bool

    def __call__(self) -> Any:
        self.session.run_with_iobinding(self.binding)
        if self.synchronize:
            self.binding.synchronize_outputs()
        return self.binding  # outputs: binding.copy_outputs_to_cpu()


def interleaved(
    sessions: list,
    feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
    warmup: int,
    iters: int,
    block: int = 10,
    progress: Callable[[], object] | None = None,
) -> list[list[float]]:
    """`interleaved_calls` of `session.run` on `feeds` (one dict for all, or one per session)."""
    per_session = feeds if isinstance(feeds, list) else [feeds] * len(sessions)
    return interleaved_calls(
        [plain_runner(s, f) for s, f in zip(sessions, per_session)], warmup, iters, block, progress
    )


def interleaved_calls(
    calls: list[Callable[[], object]],
    warmup: int,
    iters: int,
    block: int = 10,
    progress: Callable[[], object] | None = None,
) -> list[list[float]]:
    """Per-call latency samples (seconds) of `iters` runs each (rounded up to whole blocks),
    taken in blocks of `block` runs of one call, the calls alternating block by block in
    ABBA order so drifting load hits all alike. The first run after each switch is not timed:
    each session has its own ONNX Runtime thread pool whose workers keep spinning for a while
    after a run, so alternating run by run measures the contention between the pools and
    penalises the faster model. `progress()` is called after every block."""
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for index in range(-(-iters // block)):
        for k in order if index % 2 == 0 else order[::-1]:
            calls[k]()  # right after the switch: not timed
            for _ in range(block):
                start = time.perf_counter()
                calls[k]()
                samples[k].append(time.perf_counter() - start)
            if progress is not None:
                progress()
    return samples


def measure_latency(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], warmup: int = 5, iters: int = 50, threads: int = 0
) -> LatencyStats:
    """Latency of one model on the given inputs."""
    return compare_latency([model], feeds, warmup, iters, threads)[0]


def compare_latency(
    models: list[onnx.ModelProto], feeds: dict[str, np.ndarray], warmup: int = 5, iters: int = 50, threads: int = 0
) -> list[LatencyStats]:
    """Latency of several models on the same inputs, measured side by side (see `interleaved`)."""
    sessions = [make_session(m, threads) for m in models]
    batch = next(iter(feeds.values())).shape[0] if feeds else 1
    return [LatencyStats.from_samples(s, batch) for s in interleaved(sessions, feeds, warmup, iters)]
