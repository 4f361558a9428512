"""Sizes that small shape tensors carry at run time, and Reshape output shapes made from them.

`symbolic_entries` evaluates a scalar or 1-D int tensor entry by entry: an int where constant, a
`Dim` where it is a size a `Shape` node read (followed through `Gather`, `Slice`, `Split`,
`Concat` and the pass-through ops), None where computed otherwise. A torch re-export builds the
``[N, -1]`` of a flatten as ``Concat(Unsqueeze(Squeeze(Split(Reshape(Concat(Unsqueeze(Gather(
Shape(x), 0)), [-1]), [-1]), [1, 1])[0])), [-1])``, which shape inference does not follow: it names
the output's dims anew (``Reshape_64_o0__d0``, ``unk__2``), and then no axis of the Reshape pairs
with its input. `refine_reshape_shapes` writes those dims as the target says (`reshape_shape`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.model.nodes import attr

#: ops that hand a 1-D int tensor's entries on unchanged
PASS_THROUGH = ("Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity")


@dataclass(frozen=True)
class Dim:
    """The size of axis `axis` of tensor `tensor`, read at run time by a `Shape` node."""

    tensor: str
    axis: int


def symbolic_entries(view, name: str, depth: int = 12) -> list | None:
    """Entries of a scalar or 1-D int tensor of `view` (a `ModelView`): an int where constant, a
    `Dim` where it is a size a `Shape` node read, None where computed otherwise; None when its
    length is unknown."""
    value = view.value(name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    shape = view.shape(name)
    length = 1 if shape == () else shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else None
    if length is None:
        return None
    producer = view.producer.get(name)
    entries = _symbolic_op(view, producer, name, depth - 1) if producer is not None and depth > 0 else None
    return entries if entries is not None and len(entries) == length else [None] * length


def shape_bounds(node, rank: int) -> tuple[int, int]:
    """The axes [start, stop) a `Shape` node reads of a rank-`rank` tensor."""
    dims = range(rank)[attr(node, "start", 0) : attr(node, "end", rank)]
    return (dims.start, dims.stop) if len(dims) else (0, 0)


def _symbolic_op(view, node, name: str, depth: int) -> list | None:
    """The entries `node` computes for its output `name`, from its inputs' (None: not followed)."""
    if node.op_type == "Shape":
        rank = len(view.shape(node.input[0]) or ())
        start, stop = shape_bounds(node, rank)
        return [Dim(node.input[0], axis) for axis in range(start, stop)] if rank else None
    inputs = [symbolic_entries(view, i, depth) if i else None for i in node.input]
    if node.op_type == "Concat":
        parts = [part for part in inputs if part is not None]
        return [e for part in parts for e in part] if len(parts) == len(inputs) else None
    first = inputs[0] if inputs else None
    if first is None:
        return None
    if node.op_type in PASS_THROUGH:
        return first
    if node.op_type == "Gather" and attr(node, "axis", 0) == 0:
        return _gathered(view, node, first)
    if node.op_type == "Slice":
        return _sliced(view, node, first)
    if node.op_type == "Split":
        return _split_part(view, node, name, first)
    return None


def _gathered(view, node, entries: list) -> list | None:
    """Entries picked by a constant Gather index (None when an index is out of range)."""
    index = view.value(node.input[1])
    picked = [] if index is None else [int(i) for i in index.reshape(-1)]
    if index is None or not all(-len(entries) <= i < len(entries) for i in picked):
        return None
    return [entries[i] for i in picked]


def _sliced(view, node, entries: list) -> list | None:
    """A constant, positive-step Slice of 1-D entries (ONNX clamps bounds as Python slices do)."""
    bounds = [view.value(n) if n else None for n in (list(node.input[1:5]) + [""] * 4)[:4]]
    if bounds[0] is None or bounds[1] is None or any(b is not None and b.size != 1 for b in bounds):
        return None
    if bounds[2] is not None and int(bounds[2].reshape(-1)[0]) not in (0, -1):
        return None
    step = 1 if bounds[3] is None else int(bounds[3].reshape(-1)[0])
    if step < 1:
        return None
    start, stop = (int(np.asarray(b).reshape(-1)[0]) for b in bounds[:2])
    return entries[slice(start, stop, step)]


def _split_part(view, node, name: str, entries: list) -> list | None:
    """The part of 1-D `entries` that output `name` of a Split along axis 0 holds."""
    if attr(node, "axis", 0) not in (0, -1):
        return None
    sizes = view.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    parts = [int(v) for v in sizes.reshape(-1)] if sizes is not None else attr(node, "split", None)
    if parts is None:
        count = len(node.output)
        parts = [-(-len(entries) // count)] * count
    index = list(node.output).index(name)
    start = sum(parts[:index])
    return entries[start : start + parts[index]] if index < len(parts) else None


def reshape_shape(view, node) -> tuple | None:
    """The output shape of Reshape `node`, each dim that shape inference left unknown or named
    anew written as its target entry says (``Shape(t)[i]``: t's dim i; 0: the input's dim there;
    one -1: what the input's other axes leave)."""
    x, shape = node.input[0], view.shape(node.output[0])
    entries = symbolic_entries(view, node.input[1])
    if shape is None or entries is None or len(entries) != len(shape) or attr(node, "allowzero", 0):
        return shape
    shape_x = view.shape(x) or ()
    entries = [Dim(x, k) if e == 0 and k < len(shape_x) else e for k, e in enumerate(entries)]
    sizes = [(view.shape(e.tensor) or ())[e.axis] if isinstance(e, Dim) else e for e in entries]
    if entries.count(-1) == 1:
        sizes[entries.index(-1)] = _inferred_size(shape_x, entries, x)
    return tuple(s if _better(d, s, shape_x) else d for d, s in zip(shape, sizes))


def _better(dim, size, shape_x: tuple) -> bool:
    """Whether `size` (from the target) should replace the inferred `dim`: `dim` is not an int
    nor a symbol of the input's shape, and `size` is an int or one of those symbols."""
    if isinstance(dim, int) or (dim is not None and dim in shape_x) or size is None or size == -1:
        return False
    return isinstance(size, int) or size in shape_x


def _inferred_size(shape_x: tuple, entries: list, x: str) -> int | None:
    """The size a Reshape's one -1 entry stands for: the product of the input's axes that no
    entry copies over the product of the constant entries (None unless all of those are known)."""
    copied = {e.axis for e in entries if isinstance(e, Dim) and e.tensor == x}
    rest = [d for axis, d in enumerate(shape_x) if axis not in copied]
    given = [e for e in entries if e != -1 and not (isinstance(e, Dim) and e.tensor == x)]
    if not all(isinstance(d, int) for d in rest + given) or any(d <= 0 for d in given):
        return None
    total, known = int(np.prod(rest, dtype=np.int64)), int(np.prod(given, dtype=np.int64))
    return total // known if total % known == 0 else None


def refine_reshape_shapes(view) -> None:
    """Write `reshape_shape` into `view.shapes` for every Reshape whose output shape has a dim
    that is not an int, in graph order (a refined shape can resolve a later Reshape's target)."""
    for node in view.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = view.shape(node.output[0])
        if shape is not None and not all(isinstance(d, int) for d in shape):
            refined = reshape_shape(view, node)
            if refined is not None and refined != shape:
                view.shapes[node.output[0]] = refined
