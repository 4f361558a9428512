"""Apply a pruning plan: slice weights, fix size attributes and constants, re-infer shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis import ModelView, Space
from onnxprune.analysis.rules.registry import rule_for
from onnxprune.model.edit import copy_without_initializers
from onnxprune.model.nodes import node_label
from onnxprune.model.shapes import infer_shapes
from onnxprune.passes.cache_io import CacheSlices, io_shapes_entry, resize_io
from onnxprune.passes.slice_chains import ChainRestore, restore_chains
from onnxprune.select.plan import PruningPlan


@dataclass
class AppliedPlan:
    """The pruned model and, per sliced input tensor, its shape and the indices kept per axis."""

    model: onnx.ModelProto
    weights: dict[str, dict]
    #: weight chains put back with their stored tensors sliced, and why others stayed folded
    chains: ChainRestore = field(default_factory=ChainRestore)
    #: graph inputs/outputs whose declared shape changed (a KV cache's heads; `io_shapes_entry`)
    io_shapes: dict[str, dict] = field(default_factory=dict)


def pruned_atoms(plan: PruningPlan) -> dict[Space, np.ndarray]:
    """Kept indices of every space that loses channels."""
    kept: dict[Space, np.ndarray] = {}
    for group in plan.groups:
        if not plan.is_pruned(group):
            continue
        for space in group.spaces:
            kept[space] = group.kept_atoms(space, plan.kept[group.id])
    return kept


def cache_slices(model: onnx.ModelProto, plan: PruningPlan) -> CacheSlices:
    """The kept heads of `model`'s KV cache inputs/outputs under `plan` (see passes/cache_io.py)."""
    return CacheSlices.of(model, pruned_atoms(plan))


class RewriteContext:
    """What op rules' `rewrite` hooks use: kept indices, new sizes, and edits to the output model."""

    def __init__(self, view: ModelView, model: onnx.ModelProto, kept: dict[Space, np.ndarray]):
        self.view = view
        self.model = model
        self._kept = kept
        self._inits = {init.name: init for init in model.graph.initializer}
        #: plan-record fields of tensors a rule rewrote otherwise than by slicing (see `restate`)
        self.restated: dict[str, dict] = {}

    def kept(self, tensor: str, axis: int) -> np.ndarray | None:
        """Kept indices of an axis, or None when it is not pruned."""
        return self._kept.get(Space(tensor, axis))

    def shape(self, tensor: str) -> tuple | None:
        """The tensor's shape before pruning (None when unknown)."""
        return self.view.shape(tensor)

    def new_size(self, tensor: str, axis: int) -> int:
        """The axis's size after pruning."""
        kept = self.kept(tensor, axis)
        if kept is not None:
            return len(kept)
        shape = self.shape(tensor)
        assert shape is not None, f"the shape of {tensor} is known (the rule that rewrites it read it)"
        return shape[axis]

    def const(self, name: str) -> np.ndarray | None:
        """A constant's value before pruning."""
        return self.view.value(name)

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        """Replace (or add) a node attribute."""
        for attribute in node.attribute:
            if attribute.name == name:
                node.attribute.remove(attribute)
                break
        node.attribute.append(helper.make_attribute(name, value))

    def set_input(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give a node a new constant input (appended when `index` is past the last input);
        a constant shared with other nodes is copied first."""
        name = node.input[index] if index < len(node.input) else ""
        if not name or len(self.view.consumers.get(name, [])) > 1:
            name = _unique_name(f"{name or node_label(node) + '_input'}__{node_label(node)}", self._inits)
            while len(node.input) <= index:
                node.input.append("")
            node.input[index] = name
            self._inits[name] = self.model.graph.initializer.add()
        self._inits[name].CopyFrom(numpy_helper.from_array(value, name))

    def restate(self, name: str, fields: dict) -> None:
        """Say in the plan's record of input tensor `name` how it was rewritten otherwise than by
        slicing (`exact: False` and how packed values were sliced)."""
        self.restated.setdefault(name, {}).update(fields)

    def remove_attr(self, node: onnx.NodeProto, name: str) -> None:
        """Drop a node attribute if present."""
        for attribute in node.attribute:
            if attribute.name == name:
                node.attribute.remove(attribute)
                return


def _unique_name(base: str, taken) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def apply_plan(model: onnx.ModelProto, plan: PruningPlan, view: ModelView | None = None) -> AppliedPlan:
    """Return a pruned copy of a normalized model; the input model is not modified."""
    view = view or ModelView(model)
    kept = pruned_atoms(plan)
    pruned = copy_without_initializers(model)
    record = _slice_initializers(model, pruned, view, kept)
    ctx = RewriteContext(view, pruned, kept)
    pruned_tensors = {space.tensor for space in kept}
    for node in pruned.graph.node:
        rule = rule_for(node)
        touched = any(name in pruned_tensors for name in list(node.input) + list(node.output))
        if rule is not None and rule.rewrite is not None and touched:
            rule.rewrite(node, ctx)
    for name, fields in ctx.restated.items():
        record.setdefault(name, {"shape": list(view.consts[name].shape), "kept": {}}).update(fields)
    chains = restore_chains(pruned, record, view.weight_chains) if view.weight_chains else ChainRestore()
    io_shapes = io_shapes_entry(resize_io(pruned, kept))  # a KV cache's heads (analysis/rules/kv_cache.py)
    return AppliedPlan(infer_shapes(pruned), record, chains, io_shapes)


def _slice_initializers(model: onnx.ModelProto, pruned: onnx.ModelProto, view: ModelView, kept) -> dict[str, dict]:
    """Add the model's initializers to `pruned`, sliced where channels are dropped; returns the
    plan file's `weights` record."""
    by_tensor: dict[str, dict[int, np.ndarray]] = {}
    for space, indices in kept.items():
        if view.is_const(space.tensor):
            by_tensor.setdefault(space.tensor, {})[space.axis] = indices
    record = {}
    for init in model.graph.initializer:
        axes = by_tensor.get(init.name)
        if not axes:
            pruned.graph.initializer.append(init)
            continue
        value = view.consts[init.name]
        sliced = value[np.ix_(*[axes.get(a, np.arange(n)) for a, n in enumerate(value.shape)])]
        pruned.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(sliced), init.name))
        record[init.name] = {
            "shape": list(value.shape),
            "kept": {str(a): idx.tolist() for a, idx in sorted(axes.items())},
        }
    return record
