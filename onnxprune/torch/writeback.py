"""Trained weights back into the ONNX graph they came from, under their own names.

``to_torch`` keys every trainable initializer by its ONNX name (``OnnxModule.onnx_parameters``), so
after training the values can go back into the same graph instead of a fresh torch export: the
graph, its node and initializer names (the names the plan file uses) and its opset stay as they
were, and only the numbers change.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.tensors import tensor_value


def written_back(model: onnx.ModelProto, module) -> onnx.ModelProto | None:
    """A copy of `model` whose initializers hold the trained values of an ``OnnxModule`` (its
    parameters, and its floating-point buffers that are initializers, e.g. BatchNormalization
    statistics), cast to
    each initializer's stored type; None when a parameter has no initializer of its name and shape
    in `model` (the module was not built from this graph)."""
    stored = {t.name: t for t in model.graph.initializer}
    for name, value in module.onnx_parameters.items():
        tensor = stored.get(name)
        if tensor is None or tuple(tensor.dims) != tuple(value.shape):
            return None
    values = {
        name: value
        for name, value in module.onnx_tensors.items()
        if name in stored and value.is_floating_point() and value.numel() == int(np.prod(stored[name].dims))
    }
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for index, tensor in enumerate(result.graph.initializer):
        if tensor.name in values:
            dtype = tensor_value(tensor).dtype
            array = values[tensor.name].detach().cpu().numpy().astype(dtype)
            result.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.array(array, order="C"), tensor.name))
    return result
