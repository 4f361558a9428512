"""Initializer values: lazily decoded arrays, byte sizes and values of `TensorProto`s."""

from __future__ import annotations

import os
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
    when first read and kept; tensors over `LAZY_BYTES` are converted on every access (callers keep what they need,
    and a large tensor whose data do not fit its shape raises InputError when first read).
    Tensors in an external data file (`is_mapped`) are read-only memory maps of it, made on every
    access and never kept: their pages leave memory when the caller drops them."""

    def __init__(self, model: onnx.ModelProto):
        self._tensors = {init.name: init for init in model.graph.initializer}
        self._small: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._small:
            return self._small[name]
        tensor = self._tensors[name]
        value = tensor_value(tensor)
        if tensor_nbytes(tensor) <= LAZY_BYTES and not is_mapped(tensor):
            self._small[name] = value
        return value

    def dtype(self, name: str) -> np.dtype:
        """The numpy type of a tensor's values, without reading them."""
        tensor = self._tensors[name]
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except Exception:  # an undefined or unusual type: read it
            return np.asarray(self[name]).dtype

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


#: The onnx data types read as plain numpy memory maps (others are read from the file and decoded).
MAPPABLE_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in (
        "FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"
    )
)  # fmt: skip


def external_location(tensor: onnx.TensorProto) -> tuple[str, int, int | None] | None:
    """(absolute file, offset, length or None) of a tensor whose data are in an external file that
    `load_model` resolved to an absolute path; None for any other tensor (inline data, or the
    stand-ins with symbolic locations such as set-aside or in-memory weights)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not os.path.isabs(location):
        return None
    length = info.get("length")
    return location, int(info.get("offset") or 0), int(length) if length else None


def is_mapped(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's values are read from its external data file on each access."""
    return external_location(tensor) is not None


def mapped_value(tensor: onnx.TensorProto) -> np.ndarray:
    """A mapped tensor's values: a read-only numpy memory map of its bytes in the file (types numpy
    cannot map, e.g. bfloat16 or int4, are read into memory and decoded)."""
    location = external_location(tensor)
    assert location is not None, "mapped_value reads tensors with a resolved external location"
    path, offset, length = location
    shape = tuple(int(d) for d in tensor.dims)
    try:
        if tensor.data_type in MAPPABLE_TYPES:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if length is not None and length != expected:
                raise ValueError(f"{length} bytes stored, {expected} expected")
            if expected == 0:
                return np.zeros(shape, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(-1 if length is None else length)
        inline = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=shape, raw_data=data)
        return numpy_helper.to_array(inline)
    except Exception as exc:  # ValueError (file too short, size), OSError
        raise InputError(
            f"weight '{tensor.name}' cannot be read from its external data ({short_message(exc)})"
        ) from None


def tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array; InputError when its data disagree with its shape or type.
    A tensor in an external data file (`is_mapped`) comes as a read-only memory map of it."""
    if is_mapped(tensor):
        return mapped_value(tensor)
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
