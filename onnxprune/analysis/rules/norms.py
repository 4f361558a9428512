"""Decomposed normalizations: LayerNorm and RMSNorm written out in elementwise ops over the last
axis, as TF/Keras (tf2onnx), jax2tf and hand-written exports leave them:

    LayerNorm:  m = ReduceMean(x);  d = x − m;  v = ReduceMean(d² | d·d);  s = √(v + ε)
                n = d / s  (or d · Reciprocal(s), d · (v + ε)^−½);  y = n · γ + β
    RMSNorm:    v = ReduceMean(x² | x·x);  n = x / √(v + ε)  (same variants);  y = n · γ

`find_norms(view)` matches them once per view. The rules of the ops they use consult
`norm_of(view, node)` first: a matched node relates its tensors as one normalization — the axes
before the last pass through; the normalized (last) axis is frozen with a reason, or, under
`--prune-residual` (`ModelView.prune_normalized`), passes through with γ/β as members as a
`LayerNormalization` does. The masked reference then computes the two means over the kept
channels (`passes.masked_norm`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.model.nodes import attr, node_label
from onnxprune.model.view import ModelView

NORM_OPS = ("ReduceMean", "Sub", "Pow", "Mul", "Add", "Sqrt", "Div", "Reciprocal")


@dataclass
class DecomposedNorm:
    """One matched normalization over the last axis of `x`."""

    kind: str  # "LayerNorm" or "RMSNorm"
    x: str
    normalized: str  # n = (x − m) / s  (before γ, β)
    output: str  # after γ and β (= normalized when there are none)
    var_reduce: onnx.NodeProto
    mean_reduce: onnx.NodeProto | None
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    full: set[str] = field(default_factory=set)  # tensors shaped like x (the normalized axis is C)
    params: dict[str, str] = field(default_factory=dict)  # γ/β constant -> "bn_scale"/"param"

    @property
    def reason(self) -> str:
        """Why the normalized axis is frozen by default."""
        ops = "ReduceMean…Div" if self.kind == "LayerNorm" else "Pow…ReduceMean…Div"
        return (
            f"normalized by a {self.kind} (decomposed: {ops}) over this axis at "
            f"'{node_label(self.var_reduce)}' (--prune-residual prunes it)"
        )


_CACHE: weakref.WeakKeyDictionary[ModelView, dict[int, DecomposedNorm]] = weakref.WeakKeyDictionary()


def norm_of(view: ModelView, node: onnx.NodeProto) -> DecomposedNorm | None:
    """The decomposed normalization `node` belongs to, or None."""
    if node.op_type not in NORM_OPS:
        return None
    if view not in _CACHE:
        _CACHE[view] = {id(n): norm for norm in find_norms(view) for n in norm.nodes}
    return _CACHE[view].get(id(node))


def find_norms(view: ModelView) -> list[DecomposedNorm]:
    """Every decomposed LayerNorm/RMSNorm over the last axis in the model."""
    found = []
    for node in view.graph.node:
        if node.op_type == "ReduceMean":
            norm = _match(view, node)
            if norm is not None:
                found.append(norm)
    return found


def _last_axis_mean(view: ModelView, node) -> bool:
    """A ReduceMean over exactly the last axis, keeping it (size 1)."""
    if node is None or node.op_type != "ReduceMean" or not attr(node, "keepdims", 1):
        return False
    shape = view.shape(node.input[0])
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = view.value(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return bool(shape and axes is not None and [a % len(shape) for a in axes] == [len(shape) - 1])


def _scalar(view: ModelView, name: str) -> float | None:
    value = view.value(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _squared(view: ModelView, name: str) -> str | None:
    """u when `name` = Pow(u, 2) or Mul(u, u)."""
    node = view.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Pow" and _scalar(view, node.input[1]) == 2.0:
        return node.input[0]
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _users(view: ModelView, name: str) -> list:
    return view.consumers.get(name, [])


def _only_user(view: ModelView, name: str, op_types: tuple[str, ...]):
    users = _users(view, name)
    return users[0] if len(users) == 1 and users[0].op_type in op_types and name not in view.graph_outputs else None


def _other(node, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _match(view: ModelView, var_reduce) -> DecomposedNorm | None:
    """The normalization whose variance (mean of squares) `var_reduce` computes, or None."""
    if not _last_axis_mean(view, var_reduce):
        return None
    square = view.producer.get(var_reduce.input[0])
    u = _squared(view, var_reduce.input[0])
    if u is None or _only_user(view, var_reduce.input[0], ("ReduceMean",)) is None:
        return None
    centre = view.producer.get(u)
    mean = view.producer.get(centre.input[1]) if centre is not None and centre.op_type == "Sub" else None
    if centre is not None and mean is not None and _last_axis_mean(view, mean) and mean.input[0] == centre.input[0]:
        kind, x, nodes = "LayerNorm", centre.input[0], [mean, centre, square, var_reduce]
    else:
        kind, x, mean, nodes = "RMSNorm", u, None, [square, var_reduce]
    scale = _inverse_scale(view, var_reduce.output[0], nodes)
    if scale is None:
        return None
    divide, normalized = scale
    if not _numerator_ok(view, divide, x, mean, nodes):
        return None
    norm = DecomposedNorm(kind, x, normalized, normalized, var_reduce, mean, nodes)
    _affine(view, norm)
    return norm if _closed(view, norm) else None


def _inverse_scale(view: ModelView, var: str, nodes: list) -> tuple | None:
    """Follow v → (+ε) → √ → ÷ (or Reciprocal/1÷ then ·, or ^−½ then ·); returns (the node that
    applies it to the numerator, its output)."""
    node = _only_user(view, var, ("Add", "Sqrt", "Pow"))
    if node is not None and node.op_type == "Add":
        if _scalar(view, _other(node, var)) is None:
            return None
        nodes.append(node)
        var = node.output[0]
        node = _only_user(view, var, ("Sqrt", "Pow"))
    if node is None or (node.op_type == "Pow" and _scalar(view, node.input[1]) != -0.5):
        return None
    nodes.append(node)
    out = node.output[0]
    if node.op_type == "Sqrt":
        after = _only_user(view, out, ("Add", "Div", "Reciprocal"))
        if after is not None and after.op_type == "Add" and _scalar(view, _other(after, out)) is not None:
            nodes.append(after)  # ε added after the square root
            out, after = after.output[0], _only_user(view, after.output[0], ("Div", "Reciprocal"))
        if after is None:
            return None
        if after.op_type == "Div" and after.input[1] == out and _scalar(view, after.input[0]) != 1.0:
            nodes.append(after)
            return after, after.output[0]
        if after.op_type == "Div" and (after.input[1] != out or _scalar(view, after.input[0]) != 1.0):
            return None
        nodes.append(after)
        out = after.output[0]
    apply = _only_user(view, out, ("Mul",))
    if apply is None:
        return None
    nodes.append(apply)
    return apply, apply.output[0]


def _numerator_ok(view: ModelView, apply, x: str, mean, nodes: list) -> bool:
    """The normalized numerator is x (RMSNorm) or x − mean (LayerNorm; maybe a second Sub)."""
    num = apply.input[0] if apply.op_type == "Div" else _other(apply, nodes[-2].output[0])
    if mean is None:
        return num == x
    sub = view.producer.get(num)
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, mean.output[0]]:
        return False
    if sub not in nodes:
        nodes.append(sub)
    return True


def _affine(view: ModelView, norm: DecomposedNorm) -> None:
    """Absorb a following ·γ and +β (constants along the last axis only)."""
    for op, role in (("Mul", "bn_scale"), ("Add", "param")):
        node = _only_user(view, norm.output, (op,))
        param = _other(node, norm.output) if node is not None else None
        value = view.value(param) if param else None
        if (
            param is None
            or value is None
            or value.ndim < 1
            or np.prod(value.shape[:-1]) != 1
            or value.shape[-1] != (view.shape(norm.x) or (None,))[-1]
        ):
            if op == "Mul":
                continue
            return
        norm.nodes.append(node)
        norm.params[param] = role
        norm.output = node.output[0]


def _closed(view: ModelView, norm: DecomposedNorm) -> bool:
    """Every tensor inside the pattern (but x and the output) is read only by the pattern, and
    the shapes are static on the normalized axis."""
    inside = {id(n) for n in norm.nodes}
    outs = {o for n in norm.nodes for o in n.output}
    x_shape = view.shape(norm.x) or (None,)
    channels = x_shape[-1]
    if not isinstance(channels, int) or channels < 2:
        return False
    for name in outs - {norm.output}:
        if name in view.graph_outputs or any(id(u) not in inside for u in _users(view, name)):
            return False
    rank = len(x_shape)
    norm.full = {
        t for t in outs | {norm.x} if (shape := view.shape(t)) and len(shape) == rank and shape[-1] == channels
    }
    return True


def relate_norm_node(rel, node, view: ModelView, norm: DecomposedNorm) -> None:
    """Relations of one node of a matched normalization (see the module docstring)."""
    rank = rel.rank(norm.x)
    prune = view.prune_normalized
    for name in [n for n in list(node.input) + list(node.output) if n]:
        if name in norm.params:
            if prune:
                rel.weight(name, rel.rank(name) - 1, norm.params[name], 0.0, like=(norm.x, rank - 1))
            else:
                rel.freeze(name, rel.rank(name) - 1, norm.reason)
            for axis in range(rel.rank(name) - 1):
                rel.touch(name, axis)
            continue
        if view.is_const(name) or rel.rank(name) != rank:
            for axis in range(rel.rank(name) or 0):
                rel.touch(name, axis)
            continue
        for axis in range(rank - 1):
            if name != norm.x:
                rel.link(name, axis, norm.x, axis)
        if name not in norm.full:
            rel.touch(name, rank - 1)  # a statistic: size 1 on the normalized axis
        elif prune and name != norm.x:
            rel.link(name, rank - 1, norm.x, rank - 1)
        elif not prune:
            rel.freeze(name, rank - 1, norm.reason)
        else:
            rel.touch(name, rank - 1)
