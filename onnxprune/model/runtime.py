"""ONNX Runtime: the module (with a clear message when neither runtime build is installed), the one
session factory every stage uses, and running a model on CPU."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import InputError, OnnxPruneError
from onnxprune.model import segments as segmenting
from onnxprune.model.edit import copy_without_initializers, with_mapped_inline
from onnxprune.model.segments import plan_segments, segment_model, weight_bytes
from onnxprune.model.tensors import is_mapped, tensor_nbytes, tensor_value


def onnxruntime():
    """The `onnxruntime` module (from the onnxruntime or onnxruntime-gpu package)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(
            "ONNX Runtime is not installed: pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' for CUDA/TensorRT)"
        ) from None
    return ort


#: Initializers larger than this are handed to ONNX Runtime from memory, not serialized.
IN_MEMORY_BYTES = 1024

#: ONNX types of less than a byte a value: ml_dtypes holds them one a byte, ONNX Runtime packed, so
#: their initializers are always serialized with the graph
SUB_BYTE_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
)


def ort_feed(value: np.ndarray):
    """A value ONNX Runtime takes as a feed or an in-memory initializer: the array itself, or for an
    ml_dtypes array (bfloat16, float8), which numpy hands over as an opaque type, an OrtValue of
    its bytes with its ONNX type."""
    if value.dtype.kind != "V":
        return value
    raw = np.ascontiguousarray(value).view(np.dtype(f"u{value.dtype.itemsize}"))
    return onnxruntime().OrtValue.ortvalue_from_numpy_with_onnx_type(
        raw, onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    )


def _ort_value(ort, value: np.ndarray):
    """An OrtValue over a numpy array's memory (ml_dtypes arrays by their bytes, see `ort_feed`)."""
    feed = ort_feed(value)
    return feed if isinstance(feed, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(feed)


def _serialized(init: onnx.TensorProto) -> bool:
    """An initializer serialized with the graph: small, or of a type under a byte a value."""
    return tensor_nbytes(init) <= IN_MEMORY_BYTES or init.data_type in SUB_BYTE_TYPES


def _skeleton(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """The model with its large initializers marked external (their values come from memory);
    small ones are embedded, from `arrays` when given there."""
    skeleton = copy_without_initializers(model)
    graph = skeleton.graph
    external = []
    for init in model.graph.initializer:
        entry = graph.initializer.add()
        if _serialized(init):
            entry.CopyFrom(_embedded(init, arrays))
            continue
        entry.name, entry.data_type = init.name, init.data_type
        entry.dims.extend(init.dims)
        entry.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "in-memory"), ("offset", "0"), ("length", "0")):
            item = entry.external_data.add()
            item.key, item.value = key, value
        external.append(init.name)
    return skeleton, external


def _embedded(init: onnx.TensorProto, arrays: Mapping[str, np.ndarray]) -> onnx.TensorProto:
    """A small initializer as the session gets it: from `arrays` when given there, read from its
    file when memory-mapped (ONNX Runtime refuses absolute external paths), else as it is."""
    if init.name in arrays:
        return numpy_helper.from_array(np.asarray(arrays[init.name]), init.name)
    if is_mapped(init):
        return numpy_helper.from_array(np.array(tensor_value(init)), init.name)
    return init


def session_options(optimize: bool = False, threads: int = 0, spin: bool = True, log_level: int = 4):
    """ONNX Runtime session options: full graph optimizations or none, `threads` intra-op threads
    (0: ONNX Runtime's default), `spin=False`: idle workers sleep instead of spin-waiting (steadier
    on a busy machine); `log_level` 4 keeps ORT quiet (failures come back as exceptions)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return options


def make_session(
    model: onnx.ModelProto | str | os.PathLike,
    arrays: Mapping[str, np.ndarray] | None = None,
    optimize: bool = False,
    threads: int = 0,
    providers: list[str] | tuple[str, ...] | None = None,
    spin: bool = True,
    in_memory: bool = True,
    log_level: int = 4,
):
    """The one ONNX Runtime session factory (`model`: a ModelProto or a path; `providers`: default
    CPU). With `in_memory` a ModelProto's large weights are passed from memory (`arrays` by name,
    else the model's own values) instead of being serialized with the graph; without it the whole
    model is serialized (what latency measurement times, on every execution provider)."""
    ort = onnxruntime()
    options = session_options(optimize, threads, spin, log_level)
    providers = list(providers or ["CPUExecutionProvider"])
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), options, providers=providers)
    if not in_memory:
        return ort.InferenceSession(with_mapped_inline(model).SerializeToString(), options, providers=providers)
    skeleton, external = _skeleton(model, arrays or {})
    inits = {init.name: init for init in model.graph.initializer}
    values = [np.ascontiguousarray(arrays[n] if arrays and n in arrays else tensor_value(inits[n])) for n in external]
    ort_values = [_ort_value(ort, v) for v in values]
    if external:
        options.add_external_initializers(external, ort_values)
    session = ort.InferenceSession(skeleton.SerializeToString(), options, providers=providers)
    session.keepalive = (values, ort_values)  # the session reads these buffers
    return session


def run_model(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    optimize: bool = False,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Run a model with ONNX Runtime on CPU; returns outputs by name. Without graph optimizations,
    large weights are fed as inputs: ONNX Runtime copies the initializers of a session, but reads
    inputs in place, so a big model's weights are not held twice."""
    try:
        weights: dict = {}
        segments = None if optimize or weight_bytes(model) <= segmenting.SEGMENTED_BYTES else plan_segments(model)
        if segments is not None:
            return _run_segments(model, segments, feeds, arrays or {})
        if optimize:
            session = make_session(model, arrays, optimize)
        else:
            skeleton, weights = _weights_as_inputs(model, arrays or {})
            session = make_session(skeleton)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {**feeds, **weights})))
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the model: {str(exc).splitlines()[0][:300]}") from None


def _run_segments(model: onnx.ModelProto, segments: list, feeds: dict, arrays: Mapping) -> dict:
    """Run a big model segment by segment (see segments.py): one segment's weights are read at a
    time (memory maps, masked copies), and dropped before the next."""
    values = dict(feeds)
    for segment in segments:
        skeleton, weights = _weights_as_inputs(segment_model(model, segment, values), arrays)
        session = make_session(skeleton)
        names = [o.name for o in session.get_outputs()]
        fed = {name: values[name] for name in segment.inputs}
        values.update(zip(names, session.run(names, {**fed, **weights})))
        del session, weights
        for name in segment.last_use:
            values.pop(name, None)
        release_freed_memory()
    return {o.name: values[o.name] for o in model.graph.output}


def release_freed_memory() -> None:
    """Hand the C heap's freed memory back to the system (glibc's malloc_trim): the weights of
    a segment, freed, would otherwise stay in the process's resident memory."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has malloc_trim), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _weights_as_inputs(
    model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with its initializers over IN_MEMORY_BYTES turned into graph inputs, and their
    values (from `arrays` by name, else the model's own) to feed (bfloat16 ones as OrtValues)."""
    skeleton = copy_without_initializers(model)
    declared = {i.name for i in skeleton.graph.input}
    weights = {}
    for init in model.graph.initializer:
        if _serialized(init):
            skeleton.graph.initializer.add().CopyFrom(_embedded(init, arrays))
            continue
        weights[init.name] = ort_feed(
            np.ascontiguousarray(arrays[init.name] if init.name in arrays else tensor_value(init))
        )
        if init.name not in declared:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skeleton, weights
