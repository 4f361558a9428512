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
    return channel_statistics(model, [tensor], data, batches)[tensor]


def channel_statistics(
    model: onnx.ModelProto, tensors: list[str], data, batches: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (axis 1) mean and population variance of each of `tensors` over the first
    `batches` of `data`, in one pass (float64 sums)."""
    names = list(dict.fromkeys(tensors))
    session = make_session(with_outputs(model, names), optimize=True)
    count = dict.fromkeys(names, 0)
    total: dict[str, np.ndarray | float] = dict.fromkeys(names, 0.0)
    total_sq: dict[str, np.ndarray | float] = dict.fromkeys(names, 0.0)
    for index, (feeds, _) in enumerate(data.batches()):
        if index >= batches:
            break
        for name, value in zip(names, session.run(names, feeds)):
            x = value.astype(np.float64)
            x = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
            count[name] += x.shape[1]
            total[name] = total[name] + x.sum(axis=1)
            total_sq[name] = total_sq[name] + (x * x).sum(axis=1)
    stats = {}
    for name in names:
        mean = np.asarray(total[name]) / max(count[name], 1)
        stats[name] = (mean, np.maximum(np.asarray(total_sq[name]) / max(count[name], 1) - mean * mean, 0.0))
    return stats


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
