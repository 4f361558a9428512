"""The first stage: load a model, normalize it and find its channel groups (an `Analysis`), and
the checks that the analysis leaves something to prune."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.analysis.groups import ChannelGroup, find_groups
from onnxprune.analysis.layers import is_layer
from onnxprune.errors import InputError
from onnxprune.model.io import LoadedModel, load_model
from onnxprune.model.simplify_attention import simplify_attention
from onnxprune.model.view import ModelView
from onnxprune.model.weight_chains import normalize_keeping_chains

if TYPE_CHECKING:
    from onnxprune.verify.shapes import VerificationShapes

#: What the API accepts as a model: a path or a loaded ModelProto.
ModelLike = str | os.PathLike | onnx.ModelProto


@dataclass
class Analysis:
    """A normalized model, its view and its channel groups."""

    model: onnx.ModelProto
    view: ModelView
    groups: list[ChannelGroup]
    sha256: str
    #: The verification shapes (set by `prune`; see verify/shapes.py) and every tensor's shape at
    #: them, batch 1 (what MACs are counted at; {}: the view's shapes, dynamic dims as 1).
    shapes: VerificationShapes | None = None
    macs_shapes: dict = field(default_factory=dict)
    #: Whether the input declared shapes of intermediate tensors (graph.value_info); when it did
    #: not, the output does not either (it would be larger than the input for nothing).
    input_value_info: bool = True

    def verification_shapes(self) -> VerificationShapes:
        """The verification shapes `set_verification_shapes` chose (it runs before verification and
        the report)."""
        assert self.shapes is not None, "the verification shapes are chosen first"
        return self.shapes


def load_and_analyze(source: ModelLike, exclude: tuple[str, ...] = (), prune_residual: bool = False) -> Analysis:
    """Load, normalize and analyze a model (`prune_residual`: LayerNorm channels are prunable)."""
    loaded = load_model(source)
    # a file's model is ours to reuse
    return analyze_loaded(loaded, exclude, prune_residual, in_place=loaded.path is not None)


def analyze_loaded(
    loaded: LoadedModel, exclude: tuple[str, ...] = (), prune_residual: bool = False, in_place: bool = False
) -> Analysis:
    """Normalize and analyze a loaded model (`in_place`: normalize `loaded.model` itself)."""
    had_value_info = len(loaded.model.graph.value_info) > 0
    # weight chains (int8 → Cast → Mul, DequantizeLinear, fp16 → Cast) are folded for the analysis
    # and recorded, so the output keeps their stored precision
    model, chains = normalize_keeping_chains(loaded.model, in_place=in_place)
    model = simplify_attention(model)  # dynamo's kᵀ round trip through [N·H, T, D] -> one Transpose
    view = ModelView(model, prune_normalized=prune_residual)
    view.weight_chains = chains.matched(model)
    return Analysis(model, view, find_groups(view, tuple(exclude)), loaded.sha256, input_value_info=had_value_info)


def analyze(model_or_path: ModelLike, exclude: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """The channel groups of a model, prunable or frozen with a reason."""
    return load_and_analyze(model_or_path, exclude).groups


def require_prunable(analysis: Analysis) -> None:
    """InputError when every channel group is frozen (the model was loaded and checked already:
    the reason is the analysis', never the validity of the input)."""
    groups = analysis.groups
    if any(g.prunable for g in groups):
        return
    hidden = layers_in_subgraphs(analysis.model.graph)
    if hidden and not any(m.role == "out" for g in groups for m in g.members):
        names = ", ".join(f"{n.op_type} '{n.name or n.output[0]}'" for n in hidden[:3])
        more = f" and {len(hidden) - 3} more" if len(hidden) > 3 else ""
        raise InputError(
            f"the model has no prunable channel group: its layers sit inside the "
            f"subgraphs of {names}{more} (layers inside If/Loop/Scan bodies are not pruned)"
        )
    reasons = sorted({g.frozen for g in groups if g.frozen})
    detail = f"; e.g. {reasons[0]}" if reasons else ""
    raise InputError(f"the model has no prunable channel group ({len(groups)} frozen{detail})")


def layers_in_subgraphs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The main-graph nodes (If/Loop/Scan) whose subgraphs, at any depth, hold a layer (`is_layer`)."""

    def holds_layer(node: onnx.NodeProto) -> bool:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            if any(is_layer(n) or holds_layer(n) for body in bodies for n in body.node):
                return True
        return False

    return [node for node in graph.node if holds_layer(node)]


def require_finite_weights(analysis: Analysis) -> None:
    """InputError when a weight of a prunable group holds NaN or Inf: its channels cannot be scored
    and the verification would compare NaN with NaN."""
    names = {m.space.tensor for g in analysis.groups if g.prunable for m in g.members}
    for name in sorted(names):
        value = analysis.view.consts.get(name)
        if value is not None and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise InputError(f"weight '{name}' holds NaN or Inf values; channel scores need finite weights")
