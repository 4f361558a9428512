"""Latency measurement with ONNX Runtime: statistics, side-by-side timing, execution providers,
the `bench` suite and the per-layer timing that `--round-to auto` uses."""

from onnxprune.bench.latency import (
    LatencyStats,
    compare_latency,
    interleaved,
    interleaved_calls,
    io_binding_runner,
    make_session,
    measure_latency,
    plain_runner,
)
from onnxprune.bench.providers import EPS, ExecutionProvider, device_name, resolve_ep
from onnxprune.bench.suite import BenchOptions, BenchResult, bench_models

__all__ = [
    "EPS",
    "BenchOptions",
    "BenchResult",
    "ExecutionProvider",
    "LatencyStats",
    "bench_models",
    "compare_latency",
    "device_name",
    "interleaved",
    "interleaved_calls",
    "io_binding_runner",
    "make_session",
    "measure_latency",
    "plain_runner",
    "resolve_ep",
]
