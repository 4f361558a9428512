"""Read and write one refitted layer's weights: the current (pruned) weights in the layout
`NormalEquations.solve` returns, and a solution written back (a bias added when missing)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.model.nodes import attr, node_label
from onnxprune.model.tensors import tensor_value
from onnxprune.recover.layers import Layer


def _gains(node: onnx.NodeProto, layer: Layer) -> tuple[float, float]:
    """Gemm's alpha and beta (1, 1 for the other ops)."""
    spec = layer.spec
    return (float(attr(node, spec.gain[0], 1.0)), float(attr(node, spec.gain[1], 1.0))) if spec.gain else (1.0, 1.0)


def current_solution(model: onnx.ModelProto, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weights in `model` as (W, b) in the layout `NormalEquations.solve` returns
    (W [D, O] and b [O]; a grouped Conv's W [G, D, O/G] and b [G, O/G]), gains folded in."""
    inits = {init.name: init for init in model.graph.initializer}
    node = next(n for n in model.graph.node if node_label(n) == layer.name)
    old = tensor_value(inits[layer.weight]).astype(np.float64)
    alpha, beta = _gains(node, layer)
    if layer.kernel is not None:
        outputs = old.shape[0]
        grouped = old.reshape(layer.groups, outputs // layer.groups, -1).transpose(0, 2, 1)
        w = grouped if layer.groups > 1 else grouped[0]
    else:
        w = (old.T if layer.in_axis == 1 else old) * alpha
        outputs = w.shape[1]
    if layer.bias is None or layer.spec.bias is None:
        b = np.zeros(outputs)
    else:
        b = tensor_value(inits[layer.bias]).astype(np.float64).reshape(-1) * beta
    return w, (b.reshape(layer.groups, -1) if layer.kernel is not None and layer.groups > 1 else b)


def write_fit(model: onnx.ModelProto, layer: Layer, solution: tuple[np.ndarray, np.ndarray], rows: int) -> dict:
    """Write one layer's solution (W, b as `NormalEquations.solve` returns them, fitted on `rows`
    rows): its kept-column weight (and bias, added when missing) into `model`; returns the plan's
    record of the layer."""
    inits = {init.name: init for init in model.graph.initializer}
    node = next(n for n in model.graph.node if node_label(n) == layer.name)
    old = tensor_value(inits[layer.weight])
    w, b = solution  # w [D, O]
    spec = layer.spec
    alpha, beta = _gains(node, layer)
    if layer.kernel is not None:  # w [G, D, O/G] (grouped) or [D, O]
        new = (w.transpose(0, 2, 1) if w.ndim == 3 else w.T).reshape(old.shape)
        b = b.reshape(-1)
    else:
        new = (w.T if layer.in_axis == 1 else w) / alpha
    inits[layer.weight].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), layer.weight))
    entry = {
        "node": layer.name,
        "op": node.op_type,
        "weight": layer.weight,
        "bias": layer.bias,
        "bias_added": False,
        "rows": rows,
    }
    if spec.bias is None:
        entry["bias"] = None  # no bias input (MatMul): fitted without an intercept
        return entry
    bias = (b / beta).astype(old.dtype)
    if layer.bias is None:
        name = _fresh(f"{layer.weight}__bias", inits)
        model.graph.initializer.append(numpy_helper.from_array(bias, name))
        while len(node.input) <= spec.bias:
            node.input.append("")
        node.input[spec.bias] = name
        if spec.gain:
            _set_attr(node, spec.gain[1], 1.0)
        entry.update(bias=name, bias_added=True)
    else:
        shape = tensor_value(inits[layer.bias]).shape
        inits[layer.bias].CopyFrom(numpy_helper.from_array(bias.reshape(shape), layer.bias))
    return entry


def _fresh(base: str, taken) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            node.attribute.remove(attribute)
            break
    node.attribute.append(helper.make_attribute(name, value))
