"""An independent check of a plan file: it reads only the input model, the output model and the
plan (never onnxprune's analysis), as a third-party checker would."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper as nh


def input_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node tensors of a model, by name."""
    found = {i.name: nh.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            found[node.output[0]] = nh.to_array(node.attribute[0].t)
    return found


def independent_plan_check(source: onnx.ModelProto, output: onnx.ModelProto, plan: dict) -> int:
    """Assert every `weights` entry names an input tensor and that the output holds exactly
    input[np.ix_(kept...)] under that name; returns how many entries were checked."""
    inputs, outputs = input_tensors(source), input_tensors(output)
    for name, entry in plan["weights"].items():
        assert name in inputs, f"plan weight {name} is not a tensor of the input"
        value = inputs[name]
        assert list(value.shape) == entry["shape"]
        index = np.ix_(*[np.asarray(entry["kept"].get(str(a), range(n))) for a, n in enumerate(value.shape)])
        assert outputs[name].dtype == value.dtype
        np.testing.assert_array_equal(outputs[name], value[index])
    for name, entry in plan.get("derived", {}).items():  # a chain's own copy of an input tensor
        if "slice_of" in entry:
            value = inputs[entry["slice_of"]]
            index = np.ix_(*[np.asarray(entry["kept"].get(str(a), range(n))) for a, n in enumerate(value.shape)])
            np.testing.assert_array_equal(outputs[name], value[index])
    return len(plan["weights"])
