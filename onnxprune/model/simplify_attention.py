"""Replace the `Reshape -> Transpose -> Reshape` round trip that the dynamo exporter emits for kᵀ in
`F.scaled_dot_product_attention` by the single `Transpose` it computes.

The export transposes k [N, H, T, D] through [N·H, T, D]: ``Reshape(k, [-1, T, D])``,
``Transpose(perm=[0, 2, 1])``, ``Reshape(·, Concat(Shape(k)[:-2], [D], [T]))`` = [N, H, D, T].
The merged N·H axis is dynamic and the last target reads H from a `Shape`, so the heads could not
be followed through it. Merging the two leading axes, swapping the last two and splitting the
leading axis back is ``Transpose(k, perm=[0, 1, 3, 2])`` exactly; the shape arithmetic that only
fed the round trip is removed with it. Shapes are checked on the inferred (symbolic) shapes.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxprune.model.nodes import attr
from onnxprune.model.view import ModelView


def simplify_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every kᵀ round trip replaced by one Transpose (in place); returned."""
    view = ModelView(model)
    trips = [trip for node in model.graph.node if (trip := _round_trip(node, view)) is not None]
    if not trips:
        return model
    replace = {id(last): first for first, _, last in trips}
    drop = {id(n) for first, transpose, _ in trips for n in (first, transpose)}
    nodes = []
    for node in model.graph.node:
        if id(node) in replace:
            nodes.append(
                helper.make_node(
                    "Transpose",
                    [replace[id(node)].input[0]],
                    [node.output[0]],
                    name=f"{node.name or node.output[0]}::transpose",
                    perm=[0, 1, 3, 2],
                )
            )
        elif id(node) not in drop:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(_without_dead(nodes, {o.name for o in model.graph.output}))
    return model


def _round_trip(first: onnx.NodeProto, view: ModelView):
    """(Reshape, Transpose, Reshape) starting at `first` when it is the kᵀ round trip, else None."""
    if first.op_type != "Reshape":
        return None
    x, merged = first.input[0], first.output[0]
    transpose = _only_user(view, merged)
    if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm") or []) != [0, 2, 1]:
        return None
    last = _only_user(view, transpose.output[0])
    if last is None or last.op_type != "Reshape":
        return None
    xs, ms, ys = view.shape(x), view.shape(merged), view.shape(last.output[0])
    if not xs or not ms or not ys or len(xs) != 4 or len(ms) != 3 or len(ys) != 4 or None in xs:
        return None
    if tuple(ms[1:]) != tuple(xs[2:]) or tuple(ys) != (xs[0], xs[1], xs[3], xs[2]):
        return None
    return first, transpose, last


def _only_user(view: ModelView, name: str):
    users = view.consumers.get(name, [])
    return users[0] if len(users) == 1 and name not in view.graph_outputs else None


def _without_dead(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is read (repeatedly): the round trips' shape arithmetic."""
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        alive = [n for n in nodes if any(o in read for o in n.output if o)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive
