"""BatchNormalization recalibration: after pruning (and refitting), the statistics a BN node
normalizes with no longer match what flows into it. Each BN's running mean and variance are
re-estimated on calibration data, in network order, each from the network whose earlier BNs are
already recalibrated (the same order torch's train-mode recalibration implies), streamed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.edit import with_outputs
from onnxprune.model.runtime import make_session
from onnxprune.model.tensors import tensor_value


def batchnorm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """BatchNormalization nodes with constant statistics, in network order."""
    inits = {init.name for init in model.graph.initializer}
    return [
        n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[3] in inits and n.input[4] in inits
    ]


def input_statistics(model: onnx.ModelProto, tensor: str, data, batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and population variance of `tensor` over the first `batches`."""
    session = make_session(with_outputs(model, [tensor]), optimize=True)
    count = 0
    total: np.ndarray | float = 0.0
    total_sq: np.ndarray | float = 0.0
    for index, (feeds, _) in enumerate(data.batches()):
        if index >= batches:
            break
        x = session.run([tensor], feeds)[0].astype(np.float64)
        x = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        count += x.shape[1]
        total = total + x.sum(axis=1)
        total_sq = total_sq + (x * x).sum(axis=1)
    mean = np.asarray(total) / max(count, 1)
    return mean, np.maximum(np.asarray(total_sq) / max(count, 1) - mean * mean, 0.0)


def recalibrate_batchnorm(model: onnx.ModelProto, data, batches: int) -> list[str]:
    """Recalibrate every BN of `model` in place; returns the changed statistics tensors."""
    inits = {init.name: init for init in model.graph.initializer}
    changed = []
    for node in batchnorm_nodes(model):
        mean, var = input_statistics(model, node.input[0], data, batches)
        for name, value in ((node.input[3], mean), (node.input[4], var)):
            dtype = tensor_value(inits[name]).dtype
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
            changed.append(name)
    return changed
