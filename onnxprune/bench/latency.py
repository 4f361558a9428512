"""ONNX Runtime latency: median/p90/p99 over timed runs, models measured side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from ..runtime import onnxruntime


@dataclass
class LatencyStats:
    """Latency of one model at one batch size, in milliseconds."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    batch: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, seconds: list[float], batch: int) -> "LatencyStats":
        """Statistics of timed runs (seconds)."""
        ms = np.asarray(seconds) * 1000.0
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(np.percentile(ms, 99)), batch)


def make_session(model: onnx.ModelProto, threads: int = 0, providers: list[str] | None = None):
    """An ONNX Runtime session with full graph optimizations."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=providers or ["CPUExecutionProvider"])


def interleaved(sessions: list, feeds: dict[str, np.ndarray], warmup: int, iters: int,
                block: int = 10) -> list[list[float]]:
    """Per-session latency samples (seconds) of `iters` runs each (rounded up to whole blocks),
    taken in blocks of `block` runs of one session, the sessions alternating block by block in
    ABBA order so drifting load hits all alike. The first run after each switch is not timed:
    each session has its own ONNX Runtime thread pool whose workers keep spinning for a while
    after a run, so alternating run by run measures the contention between the pools and
    penalises the faster model."""
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for index in range(-(-iters // block)):
        for k in (order if index % 2 == 0 else order[::-1]):
            sessions[k].run(None, feeds)  # right after the switch: not timed
            for _ in range(block):
                start = time.perf_counter()
                sessions[k].run(None, feeds)
                samples[k].append(time.perf_counter() - start)
    return samples


def measure_latency(model: onnx.ModelProto, feeds: dict[str, np.ndarray], warmup: int = 5,
                    iters: int = 50, threads: int = 0) -> LatencyStats:
    """Latency of one model on the given inputs."""
    return compare_latency([model], feeds, warmup, iters, threads)[0]


def compare_latency(models: list[onnx.ModelProto], feeds: dict[str, np.ndarray], warmup: int = 5,
                    iters: int = 50, threads: int = 0) -> list[LatencyStats]:
    """Latency of several models on the same inputs, measured side by side (see `interleaved`)."""
    sessions = [make_session(m, threads) for m in models]
    batch = next(iter(feeds.values())).shape[0] if feeds else 1
    return [LatencyStats.from_samples(s, batch) for s in interleaved(sessions, feeds, warmup, iters)]
