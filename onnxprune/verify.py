"""The masked-reference check: the pruned model must compute what the input model computes with
the pruned channels' weights masked (zeroed), on seeded random inputs, with ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .analysis import ModelView
from .graph import copy_without_initializers, tensor_nbytes, tensor_value
from .errors import InputError, OnnxPruneError
from .runtime import onnxruntime
from .select import PruningPlan

RTOL = 1e-4
DEFAULT_BATCH = 2


@dataclass
class OutputCheck:
    """How far one output of the pruned model is from the masked reference."""

    name: str
    max_abs_diff: float
    scale: float

    @property
    def relative(self) -> float:
        """max |pruned - reference| divided by max |reference|."""
        return self.max_abs_diff / self.scale if self.scale > 0 else self.max_abs_diff

    @property
    def ok(self) -> bool:
        """True within the relative tolerance."""
        return bool(np.isfinite(self.max_abs_diff)) and self.relative <= RTOL


@dataclass
class VerifyResult:
    """Per-output comparison of a pruned model with its masked reference."""

    outputs: list[OutputCheck]

    @property
    def ok(self) -> bool:
        """True when every output matches."""
        return all(o.ok for o in self.outputs)

    def worst(self) -> OutputCheck:
        """The output that differs most."""
        return max(self.outputs, key=lambda o: o.relative if np.isfinite(o.relative) else np.inf)

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"ok": self.ok, "rtol": RTOL,
                "outputs": {o.name: {"max_abs_diff": o.max_abs_diff, "relative": o.relative} for o in self.outputs}}


def masked_weights(view: ModelView, plan: PruningPlan) -> dict[str, np.ndarray]:
    """Copies of the weights that hold pruned slices, with those slices set to their fill value."""
    masks: dict[str, list] = {}
    for group in plan.groups:
        if not plan.is_pruned(group):
            continue
        dropped = np.setdiff1d(np.arange(group.channels), plan.kept[group.id])
        for member in group.members:
            if member.fill is not None:
                masks.setdefault(member.space.tensor, []).append(
                    (member.space.axis, group.kept_atoms(member.space, dropped), member.fill))
    return {name: _masked_copy(view.value(name), tensor_masks) for name, tensor_masks in masks.items()}


def _masked_copy(value: np.ndarray, masks: list) -> np.ndarray:
    """`value` with each (axis, indices, fill) slice set to fill. When every fill is 0, the kept
    entries are copied into a fresh zero array instead: a large zero array's untouched pages
    take no memory, so a big model's masked reference costs about what it keeps."""
    if any(fill != 0 for _, _, fill in masks):
        result = np.array(value)
        for axis, indices, fill in masks:
            index = [slice(None)] * result.ndim
            index[axis] = indices
            result[tuple(index)] = fill
        return result
    kept = [np.ones(size, dtype=bool) for size in value.shape]
    for axis, indices, _ in masks:
        kept[axis][indices] = False
    result = lazy_zeros(value.shape, value.dtype)
    index = np.ix_(*[np.flatnonzero(k) for k in kept])
    result[index] = value[index]
    return result


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zero array whose pages take memory only once written. Large ones come from an anonymous
    mapping without transparent huge pages (numpy asks for huge pages: one written byte would
    then make 2 MB resident, and scattered kept channels would make the whole array resident)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    import mmap

    if nbytes < (16 << 20) or not hasattr(mmap, "MAP_PRIVATE"):  # small, or not a POSIX system
        return np.zeros(shape, dtype=dtype)

    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared pages fill on read
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def masked_reference(model: onnx.ModelProto, plan: PruningPlan) -> onnx.ModelProto:
    """A copy of the (normalized) input model whose pruned channels' weight slices are masked."""
    values = masked_weights(ModelView(model), plan)
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for init in masked.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    return masked


#: Verification inputs larger than this (elements) are refused rather than allocated.
MAX_INPUT_ELEMENTS = 1 << 30


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = DEFAULT_BATCH,
                  shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input; dynamic dims become `batch` (first) or 1."""
    rng = np.random.default_rng(seed)
    consts = {init.name for init in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name in consts:
            continue
        shape = (shapes or {}).get(info.name) or _concrete_shape(info, batch)
        if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise InputError(f"input '{info.name}' of shape {list(shape)} is too large to verify with random "
                             "data; give smaller dimensions with --shape")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = rng.random(shape) < 0.5
        else:
            feeds[info.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def _concrete_shape(info: onnx.ValueInfoProto, batch: int) -> tuple:
    dims = info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 1) for i, d in enumerate(dims))


#: Initializers larger than this are handed to ONNX Runtime from memory, not serialized.
IN_MEMORY_BYTES = 1024


def _skeleton(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """The model with its large initializers marked external (their values come from memory);
    small ones are embedded, from `arrays` when given there."""
    skeleton = copy_without_initializers(model)
    graph = skeleton.graph
    external = []
    for init in model.graph.initializer:
        entry = graph.initializer.add()
        if tensor_nbytes(init) <= IN_MEMORY_BYTES:
            entry.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name) if init.name in arrays else init)
            continue
        entry.name, entry.data_type = init.name, init.data_type
        entry.dims.extend(init.dims)
        entry.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "in-memory"), ("offset", "0"), ("length", "0")):
            item = entry.external_data.add()
            item.key, item.value = key, value
        external.append(init.name)
    return skeleton, external


def make_cpu_session(model: onnx.ModelProto, arrays: dict[str, np.ndarray] | None = None,
                     optimize: bool = False, threads: int = 0):
    """An ONNX Runtime CPU session; large weights are passed from memory (`arrays` by name, else
    the model's own values) instead of being serialized with the graph; `threads` intra-op
    threads (0: ONNX Runtime's default)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions; ORT's own log lines would be noise
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    arrays = arrays or {}
    skeleton, external = _skeleton(model, arrays)
    inits = {init.name: init for init in model.graph.initializer}
    values = [np.ascontiguousarray(arrays[n] if n in arrays else numpy_helper.to_array(inits[n]))
              for n in external]
    ort_values = [ort.OrtValue.ortvalue_from_numpy(v) for v in values]
    if external:
        options.add_external_initializers(external, ort_values)
    session = ort.InferenceSession(skeleton.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.keepalive = (values, ort_values)  # the session reads these buffers
    return session


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False,
              arrays: dict[str, np.ndarray] | None = None) -> dict:
    """Run a model with ONNX Runtime on CPU; returns outputs by name. Without graph optimizations,
    large weights are fed as inputs: ONNX Runtime copies the initializers of a session, but reads
    inputs in place, so a big model's weights are not held twice."""
    try:
        if optimize:
            session, weights = make_cpu_session(model, arrays, optimize), {}
        else:
            skeleton, weights = _weights_as_inputs(model, arrays or {})
            session = make_cpu_session(skeleton)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {**feeds, **weights})))
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot run the model: {str(exc).splitlines()[0][:300]}") from None


def _weights_as_inputs(model: onnx.ModelProto, arrays: dict) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with its initializers over IN_MEMORY_BYTES turned into graph inputs, and their
    values (from `arrays` by name, else the model's own) to feed."""
    skeleton = copy_without_initializers(model)
    declared = {i.name for i in skeleton.graph.input}
    weights = {}
    for init in model.graph.initializer:
        if tensor_nbytes(init) <= IN_MEMORY_BYTES:
            small = numpy_helper.from_array(arrays[init.name], init.name) if init.name in arrays else init
            skeleton.graph.initializer.add().CopyFrom(small)
            continue
        weights[init.name] = np.ascontiguousarray(arrays[init.name] if init.name in arrays else tensor_value(init))
        if init.name not in declared:
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skeleton, weights


def compare(pruned: dict, reference: dict) -> VerifyResult:
    """Compare two output dicts element-wise."""
    checks = []
    for name, ref in reference.items():
        got = pruned[name]
        if got.shape != ref.shape:
            checks.append(OutputCheck(name, float("inf"), 1.0))
            continue
        checks.append(_compare_one(name, got, ref))
    return VerifyResult(checks)


def _compare_one(name: str, got: np.ndarray, ref: np.ndarray) -> OutputCheck:
    """Largest difference over the finite values; NaN and ±Inf must sit at the same places with
    the same values in both (else the difference is infinite)."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(ref64)
    if not np.array_equal(finite, np.isfinite(got64)) or \
            not np.array_equal(ref64[~finite], got64[~finite], equal_nan=True):
        return OutputCheck(name, float("inf"), 1.0)
    if not finite.any():
        return OutputCheck(name, 0.0, 0.0)
    diff = float(np.max(np.abs(got64[finite] - ref64[finite])))
    return OutputCheck(name, diff, float(np.max(np.abs(ref64[finite]))))


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, plan: PruningPlan, seed: int = 0,
           shapes: dict[str, tuple] | None = None, view: ModelView | None = None) -> VerifyResult:
    """Run the pruned model and the masked reference on the same seeded random inputs."""
    from .analysis.bounded_outputs import bounded_outputs
    from .passes.apply_plan import pruned_atoms
    from .passes.masked_norm import masked_norm_reference

    view = view or ModelView(original)
    feeds = random_inputs(original, seed, shapes=shapes)
    masked = masked_norm_reference(original, pruned_atoms(plan), view)  # --prune-residual only
    bounded = bounded_outputs(original)  # sigmoid outputs: judged on their range and by their logits
    reference = run_model(bounded.expose(masked), feeds, arrays=masked_weights(view, plan))  # other weights: the model's own
    return compare(bounded.judge(run_model(bounded.expose(pruned), feeds)), bounded.judge(reference))
