"""`onnxprune bench`: several models timed side by side on one execution provider at several batch
sizes, with each model's speedup over the first and its MACs reduction."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxprune.bench.inputs import (  # input_feeds, parse_batches, parse_shapes: re-exported
    check_shapes,
    count_macs_params,
    graph_inputs,
    input_feeds,
    input_shape,
    parse_batches,
    parse_shapes,
)
from onnxprune.bench.latency import (
    LatencyStats,
    interleaved_calls,
    io_binding_runner,
    make_session,
    plain_runner,
)
from onnxprune.bench.providers import (
    ExecutionProvider,
    check_session_provider,
    device_name,
    resolve_ep,
)
from onnxprune.errors import InputError
from onnxprune.model.io import LoadedModel, load_model
from onnxprune.model.runtime import onnxruntime

FORMAT = "onnxprune-bench/1"
__all__ = [
    "FORMAT",
    "Bench",
    "BenchModel",
    "BenchOptions",
    "BenchResult",
    "bench_models",
    "graph_inputs",
    "input_feeds",
    "input_shape",
    "parse_batches",
    "parse_shapes",
]


@dataclass
class BenchOptions:
    """How to time: execution provider (short name), batch sizes, ONNX Runtime intra-op threads
    (0 = its default), untimed and timed runs per model and batch, runs per interleaved block,
    IO binding (None: on for GPU providers), shapes of dynamic input dims, input seed, and whether
    idle ONNX Runtime workers spin-wait (its default) or sleep."""

    ep: str = "cpu"
    batches: tuple[int, ...] = (1,)
    threads: int = 0
    warmup: int = 5
    iters: int = 50
    block: int = 10
    io_binding: bool | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    spin: bool = True

    def validate(self) -> None:
        """Raise InputError for values outside their range."""
        if not self.batches or any(b < 1 for b in self.batches):
            raise InputError(
                f"{{batch}}: batch sizes must be positive integers, got {list(self.batches)}", parameter="batch"
            )
        for name, value, low in (
            ("--threads", self.threads, 0),
            ("--warmup", self.warmup, 0),
            ("--iters", self.iters, 1),
            ("--block", self.block, 1),
        ):
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")

    def blocks(self) -> int:
        """Timed blocks per model and batch size."""
        return -(-self.iters // self.block)


@dataclass
class BenchModel:
    """One benchmarked model: its path, MACs and parameters (batch 1), SHA-256 of its file."""

    path: str
    macs: int
    params: int
    sha256: str = ""


@dataclass
class BenchResult:
    """Every model's latency at every batch size, on one provider and device."""

    models: list[BenchModel]
    stats: dict[int, list[LatencyStats]]  # batch -> one entry per model
    options: BenchOptions
    ep: ExecutionProvider
    device: str
    #: batch -> one list per model of every timed run (seconds), in blocks of `options.block` runs
    samples: dict[int, list[list[float]]] = field(default_factory=dict)
    #: batch -> how many times it was measured (gates re-measure inconclusive batch sizes)
    rounds: dict[int, int] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One row per (batch, model): the statistics, the speedup over the first model at that batch
        (median / median), the MACs reduction (first model's MACs / this model's) and their quotient."""
        rows = []
        first = self.models[0]
        for stats in self.stats.values():
            for model, stat in zip(self.models, stats):
                speedup = stats[0].median_ms / stat.median_ms if stat.median_ms > 0 else None
                reduction = first.macs / model.macs if model.macs else None
                efficiency = speedup / reduction if speedup and reduction else None
                rows.append(
                    {
                        "model": model.path,
                        **stat.to_dict(),
                        "speedup": speedup,
                        "macs_reduction": reduction,
                        "speedup_per_macs_reduction": efficiency,
                    }
                )
        return rows

    def to_dict(self, samples: bool = False) -> dict:
        """The `--json` document (format onnxprune-bench/1); with `samples`, every row also has its
        timed runs in milliseconds (`samples_ms`, blocks of `block` runs), as a baseline keeps them."""
        options = self.options
        doc = {
            "format": FORMAT,
            "ep": self.ep.name,
            "provider": self.ep.provider,
            "device": self.device,
            "onnxruntime": onnxruntime().__version__,
            "threads": options.threads,
            "warmup": options.warmup,
            "iters": options.iters,
            "block": options.block,
            "io_binding": self._io_binding(),
            "spin": options.spin,
            "batches": list(options.batches),
            "models": [
                {
                    "path": m.path,
                    "macs": m.macs,
                    "params": m.params,
                    "macs_ratio": m.macs / self.models[0].macs if self.models[0].macs else None,
                    "sha256": m.sha256,
                }
                for m in self.models
            ],
            "cpu_count": os.cpu_count(),
            "rounds": {str(b): n for b, n in self.rounds.items()},
            "results": self.rows(),
        }
        if samples:
            runs = [s for batch in self.stats for s in self.samples.get(batch, [[] for _ in self.models])]
            for row, taken in zip(doc["results"], runs):
                row["samples_ms"] = [round(t * 1000.0, 6) for t in taken]
        return doc

    def _io_binding(self) -> bool:
        return self.ep.device_type != "cpu" if self.options.io_binding is None else self.options.io_binding


def bench_models(
    paths: list[str | os.PathLike], options: BenchOptions, progress: Callable[[], object] | None = None
) -> BenchResult:
    """Time every model at every batch size, side by side (see `interleaved_calls`). `progress()`
    is called after every timed block (models × batches × blocks in all)."""
    return Bench(paths, options).measure(progress=progress)


class Bench:
    """Models loaded once on one provider, timed side by side as often as asked: each `measure`
    appends its timed blocks to those taken before (a gate re-measures an inconclusive batch size
    and pools the rounds). `rounds[batch]` counts the measurements of each batch size."""

    def __init__(self, paths: list[str | os.PathLike], options: BenchOptions):
        options.validate()
        self.options, self.ep = options, resolve_ep(options.ep)
        if not paths:
            raise InputError("bench needs at least one model")
        self.paths = [Path(p) for p in paths]
        loaded = [_load(p) for p in self.paths]
        for model, path in zip(loaded, self.paths):
            check_shapes(model.model, options.shapes, path)
        self.loaded = [m.model for m in loaded]
        self.models = [
            BenchModel(str(p), *count_macs_params(m.model, options.shapes), sha256=m.sha256)
            for p, m in zip(paths, loaded)
        ]
        self.sessions = [_session(p, options, self.ep) for p in self.paths]
        self.samples: dict[int, list[list[float]]] = {}
        self.rounds: dict[int, int] = {}

    def measure(
        self, batches: tuple[int, ...] | list[int] | None = None, progress: Callable[[], object] | None = None
    ) -> BenchResult:
        """Time every model at each of `batches` (default: every --batch) once more; the result of
        all the measurements so far."""
        options, ep = self.options, self.ep
        io_binding = ep.device_type != "cpu" if options.io_binding is None else options.io_binding
        for batch in batches or options.batches:
            feeds = [input_feeds(m, batch, options.shapes, options.seed) for m in self.loaded]
            calls = [
                io_binding_runner(s, f, ep.device_type) if io_binding else plain_runner(s, f)
                for s, f in zip(self.sessions, feeds)
            ]
            for call, path in zip(calls, self.paths):
                _runtime_guard(call, f"{path} fails in ONNX Runtime at batch {batch}")
            samples = interleaved_calls(calls, options.warmup, options.iters, options.block, progress)
            taken = self.samples.setdefault(batch, [[] for _ in calls])
            for pool, new in zip(taken, samples):
                pool.extend(new)
            self.rounds[batch] = self.rounds.get(batch, 0) + 1
        return self.result()

    def result(self) -> BenchResult:
        """The statistics of every run taken so far, batch sizes in --batch order."""
        order = [b for b in self.options.batches if b in self.samples]
        order += [b for b in self.samples if b not in order]
        stats = {b: [LatencyStats.from_samples(s, b) for s in self.samples[b]] for b in order}
        samples = {b: [list(s) for s in self.samples[b]] for b in order}
        return BenchResult(
            self.models, stats, self.options, self.ep, device_name(self.ep.device_type), samples, dict(self.rounds)
        )


def _session(path: Path, options: BenchOptions, ep: ExecutionProvider):
    """The session of one model on the requested provider (InputError when ONNX Runtime refuses it)."""
    session = _runtime_guard(
        lambda: make_session(path, options.threads, ep.providers, options.spin), f"ONNX Runtime cannot load {path}"
    )
    check_session_provider(session, ep)
    return session


def _runtime_guard(call: Callable[[], object], context: str):
    """`call()`, with ONNX Runtime's errors turned into one InputError line."""
    try:
        return call()
    except InputError:
        raise
    except Exception as exc:  # ONNX Runtime raises its own exception types (Fail, InvalidArgument, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InputError(f"{context}: {first}") from None


def _load(path: Path) -> LoadedModel:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return load_model(path)
