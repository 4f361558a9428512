"""Latency measurement with ONNX Runtime."""

from .latency import LatencyStats, compare_latency, interleaved, make_session, measure_latency

__all__ = ["LatencyStats", "compare_latency", "interleaved", "make_session", "measure_latency"]
