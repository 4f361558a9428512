"""Random inputs for running a model: concrete shapes for its dynamic dims, a size limit."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.errors import InputError

DEFAULT_BATCH = 2


#: Verification inputs larger than this (elements) are refused rather than allocated.
MAX_INPUT_ELEMENTS = 1 << 30


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, batch: int = DEFAULT_BATCH, shapes: dict[str, tuple] | None = None
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input; dynamic dims become `batch` (first) or 1. Floats
    are standard normal, integers 0..9 (token ids of any vocabulary), integer inputs named like a
    mask all ones (OPT's positions are the mask's running sum: other values overrun its table)."""
    rng = np.random.default_rng(seed)
    consts = {init.name for init in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name in consts:
            continue
        shape = (shapes or {}).get(info.name) or _concrete_shape(info, batch)
        if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise InputError(
                f"input '{info.name}' of shape {list(shape)} is too large to verify with random "
                "data; give smaller dimensions with {shape}",
                parameter="shape",
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = np.asarray(rng.random(shape) < 0.5)
        elif "mask" in info.name.lower():  # an attention mask is 0/1: all tokens attended (no padding)
            feeds[info.name] = np.ones(shape, dtype)
        else:
            feeds[info.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def _concrete_shape(info: onnx.ValueInfoProto, batch: int) -> tuple:
    dims = info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 1) for i, d in enumerate(dims))
