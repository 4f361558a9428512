"""The masked-reference check: the pruned model must compute what the input model computes with
the pruned channels masked, within a tolerance set by the float noise of the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis import ModelView
from onnxprune.errors import InputError
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model
from onnxprune.passes.apply_plan import cache_slices, pruned_atoms
from onnxprune.passes.cache_io import CacheSlices
from onnxprune.select.plan import PruningPlan
from onnxprune.verify.bounded_outputs import BoundedOutputs, bounded_outputs
from onnxprune.verify.compare import OutputCheck, compare_one
from onnxprune.verify.masked_norm import masked_norm_reference
from onnxprune.verify.noise import K as NOISE_K, Noise, measure_noise, tolerance as noise_tolerance


@dataclass
class VerifyResult:
    """Per-output comparison of a pruned model with its masked reference; `noise`: how the
    tolerance was calibrated (None: the fixed RTOL)."""

    outputs: list[OutputCheck]
    noise: Noise | None = None
    error: str | None = None  # why ONNX Runtime could not run the pruned model (our rewrite's fault)

    @property
    def ok(self) -> bool:
        """True when the pruned model ran and every output matches."""
        return self.error is None and all(o.ok for o in self.outputs)

    def worst(self) -> OutputCheck:
        """The output that differs most, relative to its tolerance."""
        return max(self.outputs, key=lambda o: o.relative / o.tolerance if np.isfinite(o.relative) else np.inf)

    @property
    def max_relative(self) -> float:
        """The largest relative difference over the outputs."""
        return max((o.relative for o in self.outputs), default=0.0)

    def to_dict(self) -> dict:
        """A JSON-ready summary: per output the difference, noise and tolerance; the worst output's."""
        worst = self.worst() if self.outputs else OutputCheck("", 0.0, 0.0)
        return {
            "ok": self.ok,
            **({"error": self.error} if self.error else {}),
            "max_relative": self.max_relative,
            "noise": worst.noise,
            "tolerance": worst.tolerance,
            "rtol": worst.tolerance,
            "noise_method": self.noise.method if self.noise else None,
            "k": NOISE_K,
            "outputs": {
                o.name: {
                    "max_abs_diff": o.max_abs_diff,
                    "relative": o.relative,
                    "noise": o.noise,
                    "tolerance": o.tolerance,
                }
                for o in self.outputs
            },
        }

    def summary(self) -> str:
        """'max relative difference 1.2e-05, float noise 3e-07 (float64 via torch), tolerance 0.0001'."""
        worst = self.worst()
        how = f" ({self.noise.method})" if self.noise else ""
        return (
            f"max relative difference {worst.relative:.2g}, float noise {worst.noise:.2g}{how}, "
            f"tolerance {worst.tolerance:.2g}"
        )


def masked_weights(view: ModelView, plan: PruningPlan) -> Mapping[str, np.ndarray]:
    """Copies of the weights that hold pruned slices, with those slices set to their fill value
    (each made when read: `MaskedWeights`)."""
    masks: dict[str, list] = {}
    for group in plan.groups:
        if not plan.is_pruned(group):
            continue
        dropped = np.setdiff1d(np.arange(group.channels), plan.kept[group.id])
        for member in group.members:
            if member.fill is not None:
                masks.setdefault(member.space.tensor, []).append(
                    (member.space.axis, group.kept_atoms(member.space, dropped), member.fill)
                )
    return MaskedWeights(view, masks)


class MaskedWeights(Mapping):
    """Read-only mapping name -> masked copy of a weight, made when read and not kept: a big
    model run segment by segment (model/segments.py) holds one segment's masked copies at a time."""

    def __init__(self, view: ModelView, masks: dict[str, list]):
        self._view, self._masks = view, masks

    def __getitem__(self, name: str) -> np.ndarray:
        return _masked_copy(self._view.consts[name], self._masks[name])

    def __contains__(self, name) -> bool:
        return name in self._masks

    def __iter__(self):
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)


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
    kept_index = np.ix_(*[np.flatnonzero(k) for k in kept])
    result[kept_index] = value[kept_index]
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


def compare(pruned: dict, reference: dict, noise: Noise | None = None) -> VerifyResult:
    """Compare two output dicts element-wise; with `noise`, each output's tolerance is calibrated
    from its noise (else it is RTOL)."""
    checks = []
    for name, ref in reference.items():
        got = pruned[name]
        if got.shape != ref.shape:
            check = OutputCheck(name, float("inf"), 1.0)
        else:
            check = compare_one(name, got, ref)
        if noise is not None:
            check.noise = noise.of(name)
            check.tolerance = noise_tolerance(check.noise, ref.dtype)
        checks.append(check)
    return VerifyResult(checks, noise)


@dataclass
class Reference:
    """The masked reference of a plan on one set of seeded random feeds: the model ONNX Runtime
    runs (bounded outputs' logits exposed), the masked weights it reads (by name, over the
    model's own), the feeds, its outputs as verification judges them (see `bounded_outputs`;
    a KV cache's present outputs at the kept heads, see passes/cache_io.py), its raw outputs, and the
    kept heads of the cache inputs/outputs (the pruned model is fed the kept heads of the past)."""

    model: onnx.ModelProto
    arrays: Mapping
    feeds: dict
    outputs: dict
    bounded: BoundedOutputs
    raw: dict
    cache: CacheSlices

    @classmethod
    def run(cls, original: onnx.ModelProto, plan: PruningPlan, view: ModelView, feeds: dict) -> Reference:
        """Build and run the masked reference of `plan` on `feeds`."""

        bounded = bounded_outputs(original)  # sigmoid outputs: judged on their range and by their logits
        masked = bounded.expose(masked_norm_reference(original, pruned_atoms(plan), view))  # --prune-residual
        arrays = masked_weights(view, plan)  # other weights: the model's own
        raw = run_model(masked, feeds, arrays=arrays)
        cache = cache_slices(original, plan)  # a KV cache's kept heads
        return cls(masked, arrays, feeds, cache.arrays(bounded.judge(raw)), bounded, raw, cache)

    def noise(self) -> Noise:
        """The reference's own float noise on its feeds (see noise.py)."""
        return measure_noise(self.model, self.arrays, self.feeds, self.raw, self.bounded.judge)

    def compare(self, pruned: onnx.ModelProto, noise: Noise | None = None) -> VerifyResult:
        """The pruned model run on the same feeds, judged and compared with the reference."""
        try:
            got = run_model(self.bounded.expose(pruned), self.cache.arrays(self.feeds))
        except InputError as exc:  # the input model ran: the rewrite broke it
            failed = [OutputCheck(name, float("inf"), 1.0) for name in self.outputs]
            return VerifyResult(failed, noise, error=str(exc).removeprefix("ONNX Runtime cannot run the model: "))
        return compare(self.bounded.judge(got), self.outputs, noise)


def verify(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: PruningPlan,
    seed: int = 0,
    shapes: dict[str, tuple] | None = None,
    view: ModelView | None = None,
    noise: Noise | bool | None = True,
) -> VerifyResult:
    """Run the pruned model and the masked reference on the same seeded random inputs (`shapes`:
    input shapes by name, see verify_shapes.py). The tolerance is calibrated from the reference's
    float noise (`noise=True`: measured now; a `Noise`: measured before; None/False: RTOL)."""
    view = view or ModelView(original)
    reference = Reference.run(original, plan, view, random_inputs(original, seed, shapes=shapes))
    if noise is True:
        noise = reference.noise()
    return reference.compare(pruned, noise or None)
