"""`onnxprune bench`: several models timed side by side on one execution provider at several batch
sizes, with each model's speedup over the first and its MACs reduction."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analysis import ModelView
from onnxprune.analysis.cost import model_macs, model_params
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
from onnxprune.model.inputs import random_inputs
from onnxprune.model.io import load_model
from onnxprune.model.normalize import normalize
from onnxprune.model.runtime import onnxruntime

FORMAT = "onnxprune-bench/1"


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
    """One benchmarked model: its path, MACs and parameters (batch 1)."""

    path: str
    macs: int
    params: int


@dataclass
class BenchResult:
    """Every model's latency at every batch size, on one provider and device."""

    models: list[BenchModel]
    stats: dict[int, list[LatencyStats]]  # batch -> one entry per model
    options: BenchOptions
    ep: ExecutionProvider
    device: str

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

    def to_dict(self) -> dict:
        """The `--json` document (format onnxprune-bench/1)."""
        options = self.options
        return {
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
                }
                for m in self.models
            ],
            "results": self.rows(),
        }

    def _io_binding(self) -> bool:
        return self.ep.device_type != "cpu" if self.options.io_binding is None else self.options.io_binding


def bench_models(
    paths: list[str | os.PathLike], options: BenchOptions, progress: Callable[[], object] | None = None
) -> BenchResult:
    """Time every model at every batch size, side by side (see `interleaved_calls`). `progress()`
    is called after every timed block (models × batches × blocks in all)."""
    options.validate()
    ep = resolve_ep(options.ep)
    if not paths:
        raise InputError("bench needs at least one model")
    loaded = [_load(Path(p)) for p in paths]
    for model, path in zip(loaded, paths):
        _check_shapes(model, options.shapes, path)
    sessions = [_session(Path(p), options, ep) for p in paths]
    io_binding = ep.device_type != "cpu" if options.io_binding is None else options.io_binding
    stats: dict[int, list[LatencyStats]] = {}
    for batch in options.batches:
        feeds = [input_feeds(m, batch, options.shapes, options.seed) for m in loaded]
        calls = [
            io_binding_runner(s, f, ep.device_type) if io_binding else plain_runner(s, f)
            for s, f in zip(sessions, feeds)
        ]
        for call, path in zip(calls, paths):
            _runtime_guard(call, f"{path} fails in ONNX Runtime at batch {batch}")
        samples = interleaved_calls(calls, options.warmup, options.iters, options.block, progress)
        stats[batch] = [LatencyStats.from_samples(s, batch) for s in samples]
    models = [BenchModel(str(p), *count_macs_params(m, options.shapes)) for p, m in zip(paths, loaded)]
    return BenchResult(models, stats, options, ep, device_name(ep.device_type))


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


def _load(path: Path) -> onnx.ModelProto:

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return load_model(path).model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    consts = {init.name for init in model.graph.initializer}
    return [info for info in model.graph.input if info.name not in consts]


def input_shape(info: onnx.ValueInfoProto, batch: int | None, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The concrete shape of one input at `batch`: static dims as in the model, the first dim (when
    dynamic) = the batch, other dynamic dims from `shapes` (whose first value is replaced by the
    batch). A fixed first dim other than `batch` is an error; `batch=None` accepts it (dynamic -> 1)."""
    dims = info.type.tensor_type.shape.dim
    given = shapes.get(info.name)
    shape = []
    for axis, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if axis == 0 and batch is not None and dim.dim_value != batch:
                raise InputError(
                    f"input '{info.name}' has a fixed batch size of {dim.dim_value}; "
                    f"cannot time batch {batch} (use {{batch}} {dim.dim_value})",
                    parameter="batch",
                )
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(batch or 1)
        elif given is not None:
            shape.append(given[axis])
        else:
            raise InputError(
                f"input '{info.name}' has a dynamic dimension {axis} ('{dim.dim_param or '?'}'); "
                f"give its shape with {{shape}} {info.name}=" + "x".join(["1"] + ["N"] * (len(dims) - 1)),
                parameter="shape",
            )
    return tuple(shape)


def _check_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Every --shape names an input of the model, with its rank and its static dims."""
    inputs = {info.name: info for info in graph_inputs(model)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise InputError(
                f"{{shape}} {name}: {path} has no input '{name}' (inputs: {', '.join(inputs)})", parameter="shape"
            )
        dims = inputs[name].type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise InputError(f"{{shape}} {name}: {len(shape)} dims given, the input has {len(dims)}", parameter="shape")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if axis and dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise InputError(
                    f"{{shape}} {name}: dim {axis} is {size}, the model fixes it to {dim.dim_value}", parameter="shape"
                )


def input_feeds(
    model: onnx.ModelProto, batch: int, shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input at `batch` (see `input_shape`)."""
    concrete = {info.name: input_shape(info, batch, shapes) for info in graph_inputs(model)}
    return random_inputs(model, seed, batch, concrete)


def count_macs_params(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """MACs at batch 1 (dynamic input dims from `shapes`) and parameters of a model."""

    static = onnx.ModelProto()
    static.CopyFrom(model)
    for info in graph_inputs(static):
        for dim, size in zip(info.type.tensor_type.shape.dim, input_shape(info, None, shapes)):
            dim.dim_value = size
    try:
        normalized = normalize(static)
    except InputError:
        normalized = static
    return int(sum(model_macs(ModelView(normalized)).values())), int(model_params(model))


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """--shape name=1x3x224x224 (repeatable; a name may contain '=' before the last one)."""
    shapes = {}
    for item in items or ():
        name, _, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise InputError(
                f"{{shape}} {item}: expected NAME=DxDx... with positive sizes, e.g. input=1x3x224x224",
                parameter="shape",
            )
        shapes[name] = shape
    return shapes


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,64' -> (1, 8, 64)."""
    try:
        batches = tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise InputError(
            f"{{batch}} {text}: expected comma-separated positive integers, e.g. 1,8,64", parameter="batch"
        )
    return batches
