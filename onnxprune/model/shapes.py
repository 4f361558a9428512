"""Shape inference (ONNX's, then ONNX Runtime's symbolic one) and the inferred shape of each tensor."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path

import onnx

from onnxprune.errors import InputError, short_message
from onnxprune.model.edit import detach_large_weights, transplant
from onnxprune.model.runtime import onnxruntime
from onnxprune.model.subgraphs import has_subgraph, keep_subgraphs


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop stale intermediate shapes and infer them again (graph inputs/outputs are kept).

    ONNX Runtime's symbolic shape inference goes through computed Reshape targets and keeps
    symbolic batch dims; ONNX's own inference is the fallback. Both copy the model, so large
    weights are set aside meanwhile: then `model` itself is updated and returned.
    """
    light, detached = detach_large_weights(model)
    if not detached:
        return _infer_shapes(light)
    transplant(_infer_shapes(light), model, detached)
    return model


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Infer shapes of the main graph; subgraphs are kept as they were."""
    del model.graph.value_info[:]
    originals = onnx.GraphProto()
    originals.node.extend(node for node in model.graph.node if has_subgraph(node))
    return keep_subgraphs(originals, _inferred(model))


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        SymbolicShapeInference = _symbolic_shape_inference()
        with _in_scratch_folder():  # on failure it saves a debug copy of the model into the cwd
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return inferred
    except InputError:
        raise
    except Exception:  # the symbolic engine refuses some graphs (or sympy is missing): ONNX's own
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise InputError(f"shape inference failed ({short_message(exc)})") from None


@functools.lru_cache(maxsize=1)
def _symbolic_shape_inference():
    """ONNX Runtime's SymbolicShapeInference, loaded from its file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which imports
    torch when torch is installed (seconds of start-up for every command)."""
    import importlib.util

    ort = onnxruntime()
    path = Path(ort.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxprune._symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


@contextlib.contextmanager
def _in_scratch_folder():
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Shape of every known tensor: ints for static dims, the symbol (str) or None for dynamic ones."""
    shapes: dict[str, tuple] = {}
    infos = list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    for info in infos:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(_dim(d) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _dim(dim) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None
