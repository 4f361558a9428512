"""Write a ModelProto to a file tensor by tensor: the protobuf encoding of the model, with the
initializers' bytes copied one at a time from where they are (memory-mapped external data or
the tensor itself), so a model is never serialized whole in memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from onnxprune.model.edit import copy_without_initializers
from onnxprune.model.tensors import is_mapped, tensor_value

#: Field numbers of the protobuf schema of ONNX (onnx.proto).
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
#: Bytes copied at a time from a memory-mapped tensor.
CHUNK = 16 << 20


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int) -> bytes:
    """The key of a length-delimited field."""
    return _varint(field << 3 | 2)


class _Tensor:
    """One initializer's encoding: a header (every field but the data) and its data's bytes."""

    def __init__(self, tensor: onnx.TensorProto):
        self.tensor = tensor
        self.mapped = is_mapped(tensor)
        if self.mapped:
            header = onnx.TensorProto()
            header.CopyFrom(tensor)
            header.ClearField("external_data")
            header.ClearField("data_location")
            self.header = header.SerializeToString()
            self.data_length = tensor_value(tensor).nbytes
            self.size = (
                len(self.header) + len(_key(TENSOR_RAW_DATA)) + len(_varint(self.data_length)) + self.data_length
            )
        else:
            self.size = tensor.ByteSize()

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The tensor's encoding (without its key and length in the graph)."""
        if not self.mapped:
            yield self.tensor.SerializeToString()
            return
        yield self.header + _key(TENSOR_RAW_DATA) + _varint(self.data_length)
        flat = np.ascontiguousarray(tensor_value(self.tensor)).reshape(-1).view(np.uint8)
        for start in range(0, flat.size, CHUNK):
            yield flat[start : start + CHUNK].data


def write_model(model: onnx.ModelProto, handle) -> None:
    """Write `model`'s protobuf encoding to the binary file `handle`; a mapped initializer (see
    tensors.is_mapped) is written with its values inline, read from its file in chunks."""
    shell = copy_without_initializers(model)
    graph_shell = shell.graph.SerializeToString()
    shell.ClearField("graph")
    tensors = [_Tensor(init) for init in model.graph.initializer]
    graph_size = len(graph_shell) + sum(len(_key(GRAPH_INITIALIZER)) + len(_varint(t.size)) + t.size for t in tensors)
    handle.write(shell.SerializeToString())
    handle.write(_key(MODEL_GRAPH) + _varint(graph_size) + graph_shell)
    for tensor in tensors:
        handle.write(_key(GRAPH_INITIALIZER) + _varint(tensor.size))
        for chunk in tensor.chunks():
            handle.write(chunk)
