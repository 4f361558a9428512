"""Initializer values: lazily decoded arrays, byte sizes and values of `TensorProto`s."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import InputError, short_message


def initializers(model: onnx.ModelProto) -> WeightArrays:
    """All initializers of the main graph as numpy arrays, by name (InputError for a tensor whose
    data does not fit its shape or type); large ones are read from the model when asked for."""
    return WeightArrays(model)


#: Initializers larger than this are converted to numpy on each access instead of being kept:
#: the model already holds them, and a second resident copy of a big model's weights is what
#: makes it run out of memory.
LAZY_BYTES = 64 << 20


class WeightArrays(Mapping):
    """Read-only mapping name -> numpy value of a model's initializers. Small tensors are converted
    once; tensors over `LAZY_BYTES` are converted on every access (callers keep what they need,
    and a large tensor whose data do not fit its shape raises InputError when first read)."""

    def __init__(self, model: onnx.ModelProto):
        self._tensors = {init.name: init for init in model.graph.initializer}
        self._small = {
            name: tensor_value(init) for name, init in self._tensors.items() if tensor_nbytes(init) <= LAZY_BYTES
        }

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._small:
            return self._small[name]
        return tensor_value(self._tensors[name])

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values from its shape and type. Unlike `ByteSize()`, which serializes
    the tensor (a transient copy of a large weight), it costs nothing."""
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an undefined or unusual type: measure it the slow way
        return tensor.ByteSize()
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array; InputError when its data disagree with its shape or type."""
    try:
        value = numpy_helper.to_array(tensor)
    except Exception as exc:  # ValueError (size), TypeError/KeyError (data type)
        raise InputError(
            f"weight '{tensor.name}' cannot be read: its data do not fit its shape "
            f"{list(tensor.dims)} and type ({short_message(exc)})"
        ) from None
    if list(value.shape) != list(tensor.dims):
        raise InputError(f"weight '{tensor.name}' holds {value.size} values but its shape is {list(tensor.dims)}")
    return value
