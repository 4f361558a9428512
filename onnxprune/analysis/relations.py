"""The vocabulary rules use to describe how an op relates channel spaces."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxprune.model.nodes import node_label
from onnxprune.model.view import ModelView


@dataclass(frozen=True, order=True)
class Space:
    """A channel space: one axis of one tensor (activation or weight)."""

    tensor: str
    axis: int

    def __str__(self) -> str:
        return f"{self.tensor}[{self.axis}]"


@dataclass(frozen=True)
class Link:
    """Atom i of `src` is the same channel as atoms `offset + i*block + j` (j < block) of `dst`."""

    src: Space
    dst: Space
    offset: int = 0
    block: int = 1

    @property
    def is_identity(self) -> bool:
        """True for a one-to-one mapping of equal-sized spaces."""
        return self.offset == 0 and self.block == 1


@dataclass(frozen=True)
class WeightUse:
    """A weight axis whose slices belong to channels: `role` says how, `fill` masks it."""

    space: Space
    role: str  # "out" (filters), "in" (consumer columns), "bn_scale", "param", "stat"
    fill: float | None  # value a pruned slice takes in the masked reference (None: untouched)
    node: str
    partner: Space | None = None  # the activation axis this weight axis is tied to (e.g. a conv's input)


@dataclass
class Relations:
    """What one rule says about one node: links, weight members, frozen spaces."""

    view: ModelView
    node: onnx.NodeProto
    links: list[Link] = field(default_factory=list)
    weights: list[WeightUse] = field(default_factory=list)
    frozen: dict[Space, str] = field(default_factory=dict)
    mentioned: set[tuple[str, int]] = field(default_factory=set)
    pins: list[tuple[Space, int, int]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The node's readable name."""
        return f"{self.node.op_type} '{node_label(self.node)}'"

    def size(self, tensor: str, axis: int):
        """Static size of an axis (int), or a symbol/None when dynamic or unknown."""
        shape = self.view.shape(tensor)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        return shape[axis]

    def rank(self, tensor: str) -> int | None:
        """Rank of a tensor, or None when unknown."""
        shape = self.view.shape(tensor)
        return None if shape is None else len(shape)

    def virtual(self, tag: str, size: int) -> str:
        """A 1-D tensor that exists only in the analysis, e.g. the groups of a grouped conv."""
        name = f"{node_label(self.node)}::{tag}"
        self.view.shapes[name] = (size,)
        return name

    def _space(self, tensor: str, axis: int) -> Space | None:
        rank = self.rank(tensor)
        axis = axis % rank if rank else axis
        self.mentioned.add((tensor, axis))
        size = self.size(tensor, axis)
        return Space(tensor, axis) if isinstance(size, int) and size > 1 else None

    def link(self, a: str, a_axis: int, b: str, b_axis: int, offset: int | None = None, block: int = 1) -> None:
        """Relate axis `a_axis` of `a` to `b_axis` of `b` (see `Link`); checks the sizes agree.

        Without `offset` and `block` the two axes are the same channels (equal sizes); with an
        `offset` (even 0) `a` is embedded in a part of `b` (Pad, Concat, Split, Slice).
        """
        src, dst = self._space(a, a_axis), self._space(b, b_axis)
        identity = offset is None and block == 1
        if src is None and dst is not None and not identity and self.size(a, a_axis) == 1:
            start = offset or 0  # a single channel embedded in `b` (e.g. a Concat input of size 1)
            self.pins.append((dst, start, start + block))
            return
        if src is None or dst is None:
            if (src is None) != (dst is None):
                self.freeze_space(src or dst, f"size mismatch through {self.label}")
            return
        src_size, dst_size = self.size(a, a_axis), self.size(b, b_axis)
        fits = (offset or 0) + src_size * block <= dst_size
        if not fits or (identity and src_size != dst_size):
            self.freeze_space(src, f"size mismatch through {self.label}")
            self.freeze_space(dst, f"size mismatch through {self.label}")
            return
        self.links.append(Link(src, dst, offset or 0, block))

    def weight(
        self,
        tensor: str,
        axis: int,
        role: str,
        fill: float | None,
        like: tuple[str, int],
        offset: int | None = None,
        block: int = 1,
    ) -> None:
        """Declare a weight axis as a member with `role`, the same channels as `like` (tensor, axis)
        starting at `offset`; with `block`, index i of the weight axis is `block` channels of `like`
        (a block-quantized weight's blocks of input channels)."""
        space = self._space(tensor, axis)
        partner = self._space(*like) if like[0] in self.view.shapes else None
        if space is not None:
            self.weights.append(WeightUse(space, role, fill, node_label(self.node), partner))
        self.link(tensor, axis, *like, offset=offset if offset is not None or block == 1 else 0, block=block)

    def touch(self, tensor: str, axis: int) -> None:
        """Mark an axis as handled by the rule without relating it (its size is irrelevant)."""
        self.mentioned.add((tensor, axis % (self.rank(tensor) or 1)))

    def freeze(self, tensor: str, axis: int, reason: str) -> None:
        """Freeze the channels on one axis of a tensor, with a reason the user reads."""
        space = self._space(tensor, axis)
        if space is not None:
            self.freeze_space(space, reason)

    def freeze_space(self, space: Space | None, reason: str) -> None:
        """Freeze a space (keeps the first reason given)."""
        if space is not None:
            self.frozen.setdefault(space, reason)

    def freeze_node(self, reason: str) -> None:
        """Freeze every axis of every tensor the node reads or writes."""
        for tensor in tensors_of(self.node):
            for axis in range(self.rank(tensor) or 0):
                self.freeze(tensor, axis, f"{reason} ({self.label})")

    def identity(self, a: str, b: str, skip: tuple[int, ...] = ()) -> None:
        """Link every axis of `a` to the same axis of `b` (equal ranks), except `skip`."""
        for axis in range(min(self.rank(a) or 0, self.rank(b) or 0)):
            if axis not in skip:
                self.link(a, axis, b, axis)


def tensors_of(node: onnx.NodeProto) -> list[str]:
    """The named inputs and outputs of a node."""
    return [name for name in list(node.input) + list(node.output) if name]
