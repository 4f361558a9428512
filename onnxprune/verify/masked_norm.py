"""The masked reference for pruned LayerNorm channels (`--prune-residual`).

A LayerNorm over pruned channels computes its mean and variance over the kept channels only, so
zeroing weights cannot reproduce it. In the reference each such LayerNorm is replaced by the same
normalization written out with a 0/1 mask m of the kept channels:

    mean = Σ m·x / Σ m,   d = m·(x − mean),   var = Σ d² / Σ m,   y = d / √(var + ε) · scale + bias

Kept channels get exactly what the pruned LayerNorm computes; pruned ones get `bias` (0 in the
masked weights).

A decomposed LayerNorm/RMSNorm (`analysis.norm_patterns`) keeps its nodes; its two means over the
normalized axis become Σ m·t / Σ m, and its normalized output is multiplied by m.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis import ModelView, Space
from onnxprune.analysis.rules.norms import DecomposedNorm, find_norms
from onnxprune.model.nodes import attr, node_label

#: Normalization ops over the last axis written out by `_masked_layer_norm` (RMS: no mean, no bias).
NORM_OPS = ("LayerNormalization", "RMSNormalization")
RMS_NORM_OPS = ("RMSNormalization",)


def masked_norm_reference(model: onnx.ModelProto, kept: dict[Space, np.ndarray], view: ModelView) -> onnx.ModelProto:
    """A copy of `model` with every LayerNorm whose normalized (last) axis lost channels written
    out over the kept channels; `model` itself when there is none."""
    targets = [n for n in model.graph.node if n.op_type in NORM_OPS and _kept_of(n, kept, view) is not None]
    norms = {}
    for norm in find_norms(view) if view.prune_normalized else ():
        mask = _kept_of(norm.var_reduce, kept, view, norm.x)
        if mask is not None:
            norms[norm.var_reduce.output[0]] = (norm, mask)
    if not targets and not norms:
        return model
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    if norms:
        _mask_decomposed(reference.graph, list(norms.values()), view.opset)
    if not targets:
        return reference
    nodes: list[onnx.NodeProto] = []
    for node in reference.graph.node:
        mask = _kept_of(node, kept, view) if node.op_type in NORM_OPS else None
        nodes += _masked_layer_norm(node, mask, reference.graph) if mask is not None else [node]
    del reference.graph.node[:]
    reference.graph.node.extend(nodes)
    return reference


def _kept_of(
    node: onnx.NodeProto, kept: dict[Space, np.ndarray], view: ModelView, x: str | None = None
) -> np.ndarray | None:
    """0/1 mask of the kept channels of the last axis of `x` (default: the node's input), or None
    when none were pruned."""
    x = x or node.input[0]
    shape = view.shape(x) or ()
    indices = kept.get(Space(x, len(shape) - 1)) if shape else None
    if indices is None:
        return None
    mask = np.zeros(shape[-1], np.float32)
    mask[indices] = 1.0
    return mask


def _masked_layer_norm(node: onnx.NodeProto, mask: np.ndarray, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes computing the LayerNorm (or RMSNorm: no mean subtracted) over the channels where `mask` is 1."""
    p = f"{node_label(node)}::masked"
    x, scale = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    eps = float(attr(node, "epsilon", 1e-5))
    consts = {
        f"{p}::m": mask,
        f"{p}::inv_n": np.array(1.0 / mask.sum(), np.float32),
        f"{p}::eps": np.array(eps, np.float32),
        f"{p}::axes": np.array([-1], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    make = helper.make_node
    centred = [
        make("Mul", [x, f"{p}::m"], [f"{p}::xm"]),
        make("ReduceSum", [f"{p}::xm", f"{p}::axes"], [f"{p}::sum"], keepdims=1),
        make("Mul", [f"{p}::sum", f"{p}::inv_n"], [f"{p}::mean"]),
        make("Sub", [x, f"{p}::mean"], [f"{p}::c"]),
        make("Mul", [f"{p}::c", f"{p}::m"], [f"{p}::d"]),
    ]
    nodes = [make("Mul", [x, f"{p}::m"], [f"{p}::d"])] if node.op_type in RMS_NORM_OPS else centred
    nodes += [
        make("Mul", [f"{p}::d", f"{p}::d"], [f"{p}::d2"]),
        make("ReduceSum", [f"{p}::d2", f"{p}::axes"], [f"{p}::ssq"], keepdims=1),
        make("Mul", [f"{p}::ssq", f"{p}::inv_n"], [f"{p}::var"]),
        make("Add", [f"{p}::var", f"{p}::eps"], [f"{p}::ve"]),
        make("Sqrt", [f"{p}::ve"], [f"{p}::std"]),
        make("Div", [f"{p}::d", f"{p}::std"], [f"{p}::norm"]),
        make("Mul", [f"{p}::norm", scale], [f"{p}::scaled" if bias else node.output[0]]),
    ]
    if bias:
        nodes.append(make("Add", [f"{p}::scaled", bias], [node.output[0]]))
    return nodes


def _mask_decomposed(graph: onnx.GraphProto, norms: list[tuple[DecomposedNorm, np.ndarray]], opset: int) -> None:
    """Rewrite, in place, each decomposed norm's means over the kept channels and mask its output."""
    replace: dict[str, list[onnx.NodeProto]] = {}
    for norm, mask in norms:
        p = f"{node_label(norm.var_reduce)}::masked"
        graph.initializer.extend(
            [
                numpy_helper.from_array(mask, f"{p}::m"),
                numpy_helper.from_array(np.array(1.0 / mask.sum(), np.float32), f"{p}::inv_n"),
            ]
        )
        for reduce in filter(None, (norm.mean_reduce, norm.var_reduce)):
            replace[reduce.output[0]] = _masked_mean(reduce, p, opset)
        raw = f"{p}::raw"
        replace[norm.normalized] = [helper.make_node("Mul", [raw, f"{p}::m"], [norm.normalized])]
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "::masked_norm::axes"))
    nodes = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if out in replace and node.op_type == "ReduceMean":
            nodes += replace[out]
        elif out in replace:
            node.output[0] = replace[out][0].input[0]
            nodes += [node] + replace[out]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _masked_mean(reduce: onnx.NodeProto, p: str, opset: int) -> list[onnx.NodeProto]:
    """Σ m·t / Σ m over the last axis, written to the ReduceMean's output."""
    t, out = reduce.input[0], reduce.output[0]
    tag = f"{p}::{out}"
    if opset >= 13:
        total = helper.make_node("ReduceSum", [f"{tag}::tm", "::masked_norm::axes"], [f"{tag}::sum"], keepdims=1)
    else:
        total = helper.make_node("ReduceSum", [f"{tag}::tm"], [f"{tag}::sum"], axes=[-1], keepdims=1)
    return [
        helper.make_node("Mul", [t, f"{p}::m"], [f"{tag}::tm"]),
        total,
        helper.make_node("Mul", [f"{tag}::sum", f"{p}::inv_n"], [out]),
    ]
