"""The op-rule registry: one rule per op type says how the op relates channel spaces and, for a
layer (an op with a weight), where its weight is, how its axes map to channels and what it costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxprune.analysis.relations import Relations
from onnxprune.model.nodes import attr
from onnxprune.model.view import ModelView
from onnxprune.registry import Registry

RelateFn = Callable[[Relations, onnx.NodeProto, ModelView], None]
RewriteFn = Callable[[onnx.NodeProto, "object"], None]
#: a tensor's shape (dynamic dims not ints), or None when unknown
ShapeFn = Callable[[str], "tuple | None"]
#: multiply-accumulates of one node from its tensors' shapes (0 when a shape it needs is unknown)
MacsFn = Callable[[onnx.NodeProto, ShapeFn], int]


@dataclass(frozen=True)
class WeightLayout:
    """A layer's weight: which input it is and which of its axes hold the output and the input
    (reduction) channels, plus what the cost model, the layer timer and the least-squares refit
    need to know about the op. An op whose rule has a layout is a *layer*."""

    out_axis: int
    in_axis: int
    weight: int = 1
    #: input index of a bias added per output channel (None: the op has no bias input)
    bias: int | None = None
    #: an attribute that, when set, swaps `out_axis` and `in_axis` (Gemm's transB)
    transposed_by: str | None = None
    #: an attribute that, when set, makes the op read its input transposed (Gemm's transA)
    input_transposed_by: str | None = None
    #: attributes scaling the product and the bias (Gemm's alpha and beta)
    gain: tuple[str, str] | None = None
    #: a `group` attribute splits the channels into independent groups
    grouped: bool = False
    #: weight axes from 2 on are a spatial kernel (a convolution)
    kernel: bool = False
    #: only a 2-D weight makes the op a layer with this layout (MatMul by a matrix)
    matrix: bool = False
    #: `bench/layers.py` times the layer as a single-op model
    timed: bool = False
    #: `recover/reconstruct.py` can refit the layer's weight by least squares
    refit: bool = False
    #: the part of the op's MACs that does not scale with this weight (an LSTM's recurrent product)
    unscaled_macs: MacsFn | None = None

    def axes(self, node: onnx.NodeProto) -> tuple[int, int]:
        """(input-channel axis, output-channel axis) of `node`'s weight."""
        if self.transposed_by and attr(node, self.transposed_by, 0):
            return self.out_axis, self.in_axis
        return self.in_axis, self.out_axis


@dataclass(frozen=True)
class OpRule:
    """How one op type maps channels (`relate`) and fixes its size attributes after pruning; for a
    layer also its weight `layout` and its `macs`."""

    ops: tuple[str, ...]
    relate: RelateFn
    mapping: str
    freezes_when: str
    rewrite: RewriteFn | None = None
    opsets: str = "11-21"
    layout: WeightLayout | None = None
    macs: MacsFn | None = None
    #: the op's domain ("": the default ONNX domain; "com.microsoft": an ONNX Runtime contrib op)
    domain: str = ""


#: op type -> its rule (the built-in rule modules are listed in `onnxprune/registry.py`)
RULES: Registry[OpRule] = Registry("op rule")


def rule(
    *ops: str,
    mapping: str,
    freezes_when: str = "never",
    rewrite: RewriteFn | None = None,
    opsets: str = "11-21",
    layout: WeightLayout | None = None,
    macs: MacsFn | None = None,
    domain: str = "",
) -> Callable[[RelateFn], RelateFn]:
    """Register `relate` as the rule for `ops` of `domain`; `mapping`/`freezes_when` document it
    for `ops`; `layout` and `macs` make the ops layers (see `WeightLayout`)."""

    def register(relate: RelateFn) -> RelateFn:
        entry = OpRule(ops, relate, mapping, freezes_when, rewrite, opsets, layout, macs, domain)
        for op in ops:
            RULES.add(op, entry)
        return relate

    return register


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The rule for a node (of the default ONNX domain, or of the domain its rule names), or None."""
    entry = RULES.get(node.op_type)
    domain = "" if node.domain == "ai.onnx" else node.domain
    return entry if entry is not None and entry.domain == domain else None
