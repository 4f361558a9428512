"""What the analysis can tell about small shape tensors computed at run time (TorchScript builds
Reshape and Expand targets from `Shape` nodes when a dimension is dynamic).

* `shape_entries` evaluates a 1-D int tensor entry by entry where its value does not depend on the
  input (`Concat`, `Unsqueeze`/`Reshape`/`Cast` of 1-D tensors, `Equal`, `Where` over constants),
  `None` where it does — e.g. ``Where(Equal([N, -1, -1], -1), 1, [N, -1, -1])`` = [None, 1, 1].
* `copied_dims` recognises ``Shape(x)[s:e]`` placed at positions s..e-1 of a `Concat` that is
  only used as the target of ``Reshape(x, ·)``: those entries copy x's own sizes, so they follow
  pruning by themselves (``flatten(2)`` = ``Reshape(x, Concat(Shape(x)[0:2], [-1]))``).
"""

from __future__ import annotations

from onnxprune.model.nodes import attr
from onnxprune.model.symbolic import PASS_THROUGH, Dim, shape_bounds, symbolic_entries
from onnxprune.model.view import ModelView


def shape_entries(view: ModelView, name: str, depth: int = 8) -> list | None:
    """Entries of a 1-D int tensor (int, or None where computed from the input); None when its
    length is unknown."""
    value = view.value(name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    shape = view.shape(name)
    length = shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else None
    producer = view.producer.get(name)
    if length is None or producer is None or depth == 0:
        return None if length is None else [None] * length
    op, inputs = producer.op_type, [shape_entries(view, i, depth - 1) for i in producer.input if i]
    known = [e for e in inputs if e is not None]
    complete = len(known) == len(inputs)  # every input's entries are known
    if op == "Concat" and complete:
        entries = [e for part in known for e in part]
    elif op in PASS_THROUGH and inputs and inputs[0] is not None:
        entries = inputs[0]
    elif op == "Equal" and len(inputs) == 2 and complete:
        entries = [None if a is None or b is None else int(a == b) for a, b in _broadcast(known[0], known[1], length)]
    elif op == "Where" and len(inputs) == 3 and complete:
        cond, a, b = (_broadcast_one(e, length) for e in known)
        entries = [None if c is None else (x if c else y) for c, x, y in zip(cond, a, b)]
    else:
        entries = [None] * length
    return entries if len(entries) == length else [None] * length


def _broadcast_one(entries: list, length: int) -> list:
    return entries * length if len(entries) == 1 else entries


def _broadcast(a: list, b: list, length: int):
    return zip(_broadcast_one(a, length), _broadcast_one(b, length))


def copied_range(view: ModelView, name: str) -> tuple[str, int, int] | None:
    """(x, s, e) when `name` is ``Shape(x)[s:e]`` (a Shape, or a constant unit-step Slice of one)."""
    producer = view.producer.get(name)
    if producer is None:
        return None
    if producer.op_type == "Shape":
        rank = len(view.shape(producer.input[0]) or ())
        return (producer.input[0], *shape_bounds(producer, rank)) if rank else None
    if producer.op_type != "Slice" or len(producer.input) < 3:
        return None
    inner = copied_range(view, producer.input[0])
    bounds = [view.value(n) if n else None for n in (list(producer.input[1:5]) + [""] * 4)[:4]]
    if (
        inner is None
        or bounds[0] is None
        or bounds[1] is None
        or any(b is not None and b.size != 1 for b in bounds)
        or (bounds[3] is not None and int(bounds[3].reshape(-1)[0]) != 1)
    ):
        return None
    x, s0, e0 = inner
    start, stop, _ = slice(int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0]), 1).indices(e0 - s0)
    return x, s0 + start, s0 + max(stop, start)


def copied_dims(view: ModelView, piece: str, data: str, position: int) -> bool:
    """True when `piece` is ``Shape(data)[s:e]`` (however computed: `model.symbolic`) and sits
    at position s of a Concat target (the copy of data's own sizes) — checked for this one Concat
    only."""
    entries = symbolic_entries(view, piece)
    return bool(entries) and all(e == Dim(data, position + k) for k, e in enumerate(entries or ()))


def feeds_copies_only(view: ModelView, piece: str) -> bool:
    """True when every use of `piece` (a ``Shape(x)[s:e]``) copies x's sizes back (`copies_into`)."""
    users = view.consumers.get(piece, [])
    return bool(users) and all(copies_into(view, piece, user) for user in users)


def copies_into(view: ModelView, piece: str, concat) -> bool:
    """True when `piece` = ``Shape(x)[s:e]`` sits at position s of `concat`, whose only uses are
    targets of ``Reshape(x, ·)`` (allowzero 0): the sizes read are only copied back."""
    copied = copied_range(view, piece)
    if copied is None or concat.op_type != "Concat" or _position(view, concat, piece) != copied[1]:
        return False
    users = view.consumers.get(concat.output[0], [])
    return bool(users) and all(
        u.op_type == "Reshape"
        and u.input[0] == copied[0]
        and u.input[1] == concat.output[0]
        and not attr(u, "allowzero", 0)
        for u in users
    )


def _position(view: ModelView, concat, piece: str) -> int | None:
    """Offset of `piece` in the Concat's 1-D output (None when a piece before it has no static length)."""
    offset = 0
    for name in concat.input:
        if name == piece:
            return offset
        shape = view.shape(name)
        if not shape or not isinstance(shape[0], int):
            return None
        offset += shape[0]
    return None
