"""Outputs that are a bounded function of a logit (Sigmoid, HardSigmoid, Tanh, Softsign, Softmax),
and how verification judges them.

On random inputs such an output is often saturated: a text detector's probability map is ~1e-7
everywhere. ONNX Runtime's float32 Sigmoid is accurate to about 6e-8 in absolute terms only
(sigmoid(-15.85) = 1.79e-7 and sigmoid(-15.8500019) = 1.19e-7), so a comparison relative to the
output's largest value (1.8e-7) calls one ulp of difference in the logit a 0.67 mismatch, and a
genuinely wrong logit (-20 instead of -16) would pass unseen. Verification therefore judges such an
output twice: the probabilities relative to their range (max(|ref|, 1)), and the logit itself
relative to its own largest value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

#: op -> the bound of |output| (the scale a probability is compared on)
BOUNDED = {"Sigmoid": 1.0, "HardSigmoid": 1.0, "Tanh": 1.0, "Softsign": 1.0, "Softmax": 1.0}
#: ops that only move values (an output reshaped or transposed after the activation)
MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")

LOGIT_SUFFIX = " (its logit)"
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass
class BoundedOutputs:
    """The bounded outputs of a model: output -> (its logit, the bound of |output|)."""

    logits: dict[str, tuple[str, float]] = field(default_factory=dict)
    graph_outputs: set[str] = field(default_factory=set)

    def expose(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` with the logits as extra outputs (the model itself when there are none)."""
        names = list(dict.fromkeys(logit for logit, _ in self.logits.values() if logit not in self.graph_outputs))
        if not names:
            return model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
        return copy

    def judge(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs to compare: each bounded output with its bound appended (so its scale is at
        least its range) and its logit under '<output> (its logit)'; the others as they are."""
        judged = {}
        for name, value in outputs.items():
            if name not in self.graph_outputs:
                continue  # an exposed logit
            if name in self.logits:
                logit, bound = self.logits[name]
                judged[name] = np.append(np.asarray(value, np.float64).reshape(-1), bound)
                judged[name + LOGIT_SUFFIX] = outputs[logit]
            else:
                judged[name] = value
        return judged


def bounded_outputs(model: onnx.ModelProto) -> BoundedOutputs:
    """The graph outputs (float) that a bounded activation computes, through reshapes."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    found = BoundedOutputs(graph_outputs={o.name for o in model.graph.output})
    for output in model.graph.output:
        if output.type.tensor_type.elem_type not in FLOATS:
            continue
        node = producer.get(output.name)
        while node is not None and node.op_type in MOVES:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in BOUNDED and node.domain in ("", "ai.onnx"):
            found.logits[output.name] = (node.input[0], BOUNDED[node.op_type])
    return found
