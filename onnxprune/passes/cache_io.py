"""Graph inputs and outputs that lose channels: the head axis of a KV cache (see
analysis/rules/kv_cache.py), the one boundary axis analysis lets be pruned.

* The pruned model declares the new head count on its cache inputs and present outputs
  (`resize_io`): the runtime allocates the cache from those shapes. The plan and the report list
  the change under `io_shapes`.
* Verification (`CacheSlices`): the masked reference runs on the full feeds; whatever its pruned
  heads' cache holds (the random past, zeros for the current token's keys/values) leaves the
  other outputs unchanged, since the masked heads' output-projection columns are zero. So the
  pruned model is fed the kept heads of each past input, and its present outputs are compared
  with the kept heads of the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.relations import Space


def boundary_names(model: onnx.ModelProto) -> set[str]:
    """Names of the model's graph inputs and outputs."""
    return {i.name for i in model.graph.input} | {o.name for o in model.graph.output}


def resized_io(model: onnx.ModelProto, kept: dict[Space, np.ndarray]) -> dict[str, dict]:
    """Per graph input/output that loses channels: {axis: (size before, size after)}."""
    changed: dict[str, dict] = {}
    for info in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            indices = kept.get(Space(info.name, axis))
            if indices is not None and dim.HasField("dim_value"):
                changed.setdefault(info.name, {})[axis] = (int(dim.dim_value), len(indices))
    return changed


def resize_io(model: onnx.ModelProto, kept: dict[Space, np.ndarray]) -> dict[str, dict]:
    """Set the declared size of every pruned graph input/output axis to its kept count (in place);
    returns what changed (`resized_io`)."""
    changed = resized_io(model, kept)
    for info in list(model.graph.input) + list(model.graph.output):
        for axis, (_, size) in changed.get(info.name, {}).items():
            info.type.tensor_type.shape.dim[axis].dim_value = size
    return changed


def io_shapes_entry(changed: dict[str, dict]) -> dict[str, dict]:
    """The plan's and the report's `io_shapes`: per resized graph input/output, per axis, the
    size before and after ({"past_key_values.0.key": {"1": {"from": 2, "to": 1}}})."""
    return {
        name: {str(axis): {"from": before, "to": after} for axis, (before, after) in sorted(axes.items())}
        for name, axes in changed.items()
    }


@dataclass
class CacheSlices:
    """The kept indices of every graph input/output axis that loses channels (empty: none does)."""

    kept: dict[Space, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto, kept: dict[Space, np.ndarray]) -> CacheSlices:
        """The spaces of `kept` (see `pruned_atoms`) on `model`'s graph inputs and outputs."""
        boundary = boundary_names(model)
        return cls({space: indices for space, indices in kept.items() if space.tensor in boundary})

    def arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`arrays` (feeds or outputs by name) with each pruned axis cut to its kept indices."""
        if not self.kept:
            return arrays
        result = dict(arrays)
        for space, indices in self.kept.items():
            if space.tensor in result:
                result[space.tensor] = np.take(result[space.tensor], indices, axis=space.axis)
        return result

    def shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """Input shapes of the original model -> those of the pruned model."""
        result = dict(shapes)
        for space, indices in self.kept.items():
            if space.tensor in result:
                shape = list(result[space.tensor])
                shape[space.axis] = len(indices)
                result[space.tensor] = tuple(shape)
        return result
