"""Latency measurement with ONNX Runtime: statistics, side-by-side timing, execution providers,
the `bench` suite, its CI gates (speedup, latency, regression against a baseline, decided on
bootstrap intervals) and the per-layer timing that `--round-to auto` uses."""

from onnxprune.bench.gates import Decision, GateSettings
from onnxprune.bench.gating import GatedRun, GateRequest, gated_bench
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
from onnxprune.bench.suite import Bench, BenchOptions, BenchResult, bench_models

__all__ = [
    "EPS",
    "Bench",
    "BenchOptions",
    "BenchResult",
    "Decision",
    "ExecutionProvider",
    "GateRequest",
    "GateSettings",
    "GatedRun",
    "LatencyStats",
    "bench_models",
    "compare_latency",
    "device_name",
    "gated_bench",
    "interleaved",
    "interleaved_calls",
    "io_binding_runner",
    "make_session",
    "measure_latency",
    "plain_runner",
    "resolve_ep",
]
