"""The model's own float noise, and the verification tolerance calibrated from it.

A pruned model computes the same sums as its masked reference in another order (zeroed channels
gone, other kernels chosen), so the two differ by rounding noise that grows with depth. The noise
of one output is measured on the verification inputs as the largest relative deviation of the
masked reference, as ONNX Runtime computes it, from

* `float64 via torch`: the same masked reference evaluated in float64 by `onnxprune.torch`
  (used when torch is installed and its translation agrees with ONNX Runtime: the ONNX Runtime
  deviation must not exceed `AGREEMENT` times torch's own stored-precision deviation), else
* `stored precision, reordered`: ONNX Runtime with graph optimizations on (fused kernels, other
  summation orders) and, for float inputs, the inputs moved by one ulp; the largest of the two.
  A model over `TORCH_MAX_ELEMENTS` weight elements skips the optimized run (an optimizing
  session copies every weight, doubling a big model's memory): the 1-ulp run reads them in place.

The tolerance of an output is `clamp(K * noise, floor, cap)`: floor 1e-4 (4 ulps for float16 /
bfloat16 outputs), cap 1e-2 (32 ulps for float16 / bfloat16), so a genuine mismatch of 3e-3 on a
float32 model whose noise is 1e-6 still fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.errors import InputError
from onnxprune.model.runtime import run_model
from onnxprune.verify.compare import compare_one

#: Tolerance = K x measured noise (between the floor and the cap).
K = 10.0
FLOOR = 1e-4
CAP = 1e-2
#: The torch float64 measurement is trusted when ONNX Runtime's deviation from it is at most this
#: many times torch's own (stored precision vs float64): else the translations disagree.
AGREEMENT = 10.0
#: Models with more weight elements than this are not converted to torch (float64 doubles them)
#: nor run by an optimizing ONNX Runtime session (it copies the weights).
TORCH_MAX_ELEMENTS = 1 << 25

FLOAT64 = "float64 via torch"
REORDERED = "stored precision, reordered (ONNX Runtime optimized, inputs moved by 1 ulp)"


@dataclass
class Noise:
    """Relative float noise per output name and how it was measured."""

    method: str
    relative: dict[str, float] = field(default_factory=dict)

    def of(self, name: str) -> float:
        """The output's noise (0 when unmeasured)."""
        value = self.relative.get(name, 0.0)
        return value if np.isfinite(value) else 0.0

    @property
    def worst(self) -> float:
        """The largest noise over the outputs."""
        return max((self.of(n) for n in self.relative), default=0.0)


def tolerance(noise: float, dtype) -> float:
    """clamp(K * noise, floor, cap) for an output of `dtype` (see the module docstring)."""
    floor, cap = FLOOR, CAP
    dtype = np.dtype(dtype) if _is_float(dtype) else None
    if dtype is not None and dtype.itemsize <= 2:
        try:
            eps = float(np.finfo(dtype).eps)
        except ValueError:  # a 2-byte float numpy has no finfo for (bfloat16 from ml_dtypes)
            eps = 2.0**-7
        floor, cap = max(floor, 4 * eps), max(cap, 32 * eps)
    return float(min(cap, max(floor, K * noise)))


def _is_float(dtype) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:
        return False


def measure_noise(model, arrays: Mapping, feeds: dict, outputs: dict, judge=None) -> Noise:
    """The float noise of the masked reference `model` (weights `arrays` by name over its own),
    whose ONNX Runtime outputs on `feeds` are `outputs`; see the module docstring. `judge` maps
    a model's outputs to what verification compares (bounded_outputs.BoundedOutputs.judge: a
    saturated probability on its range, its logit beside it); the noise is that of those."""
    judge = judge or (lambda values: values)
    relative = _float64_noise(model, arrays, feeds, outputs, judge)
    if relative is not None:
        return Noise(FLOAT64, relative)
    return Noise(REORDERED, _reordered_noise(model, arrays, feeds, outputs, judge))


def relative_deviation(got: dict, reference: dict) -> dict[str, float]:
    """max |got - reference| / max |reference| per output (finite values only)."""
    return {
        name: float(compare_one(name, got[name], value).relative) if got[name].shape == value.shape else float("inf")
        for name, value in reference.items()
        if name in got
    }


def _float64_noise(model, arrays: Mapping, feeds: dict, outputs: dict, judge) -> dict[str, float] | None:
    """ONNX Runtime's deviation from float64 (None when torch is missing, cannot translate the
    model, or disagrees with ONNX Runtime beyond float noise)."""
    if _weight_elements(model) > TORCH_MAX_ELEMENTS:  # checked first: importing torch costs memory too
        return None
    try:
        import torch

        from onnxprune.torch.convert import OnnxModule
    except ImportError:
        return None
    try:
        module = OnnxModule(model)
        tensors = module.onnx_tensors
        for name, value in arrays.items():
            if name in tensors:
                tensors[name].data = torch.from_numpy(np.array(value))
        stored = _torch_outputs(module, feeds, None)
        exact = _torch_outputs(module.double(), feeds, torch.float64)
    except Exception:  # an op without a translation, a dtype torch refuses: measure the other way
        return None
    exact = judge(exact)
    ort_dev, torch_dev = relative_deviation(judge(outputs), exact), relative_deviation(judge(stored), exact)
    floor = FLOOR / K
    if any(
        not np.isfinite(ort_dev.get(n, np.inf)) or ort_dev[n] > max(AGREEMENT * torch_dev.get(n, 0.0), floor)
        for n in exact
    ):
        return None
    return ort_dev


def _torch_outputs(module, feeds: dict, dtype) -> dict[str, np.ndarray]:
    import torch

    inputs = []
    for name in module.input_names:
        value = torch.from_numpy(np.array(feeds[name]))
        inputs.append(value.to(dtype) if dtype is not None and value.is_floating_point() else value)
    with torch.no_grad():
        result = module(*inputs)
    result = result if isinstance(result, tuple) else (result,)
    return {name: value.detach().numpy() for name, value in zip(module.output_names, result)}


def _weight_elements(model) -> int:
    """Elements of a model's initializers."""
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer)


def _reordered_noise(model, arrays: Mapping, feeds: dict, outputs: dict, judge) -> dict[str, float]:
    """The larger deviation of ONNX Runtime with graph optimizations on and of inputs moved by
    one ulp (random direction per element, seeded)."""

    deviations, outputs = [], judge(outputs)
    try:
        if _weight_elements(model) <= TORCH_MAX_ELEMENTS:  # an optimizing session copies the weights
            deviations.append(relative_deviation(judge(run_model(model, feeds, optimize=True, arrays=arrays)), outputs))
    except InputError:  # an optimizer that refuses the model: the other estimate stands
        pass
    rng = np.random.default_rng(1)
    nudged = {name: _nudge(value, rng) for name, value in feeds.items()}
    if any(nudged[name] is not feeds[name] for name in feeds):
        deviations.append(relative_deviation(judge(run_model(model, nudged, arrays=arrays)), outputs))
    return {name: max((d.get(name, 0.0) for d in deviations), default=0.0) for name in outputs}


def _nudge(value: np.ndarray, rng) -> np.ndarray:
    """A float array moved by one ulp up or down per element (other arrays as they are)."""
    if not np.issubdtype(value.dtype, np.floating):
        return value
    direction = np.where(rng.random(value.shape) < 0.5, -np.inf, np.inf).astype(value.dtype)
    return np.nextafter(value, direction)
