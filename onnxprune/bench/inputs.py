"""Inputs of a benchmarked model: the graph inputs, their concrete shapes at a batch size (dynamic
dims from --shape), seeded random feeds, MACs and parameters, and the parsers of --shape and --batch."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis import ModelView
from onnxprune.analysis.cost import model_macs, model_params
from onnxprune.errors import InputError
from onnxprune.model.inputs import random_inputs
from onnxprune.model.normalize import normalize


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    consts = {init.name for init in model.graph.initializer}
    return [info for info in model.graph.input if info.name not in consts]


def input_shape(info: onnx.ValueInfoProto, batch: int | None, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The concrete shape of one input at `batch`: static dims as in the model, the first dim (when
    dynamic) = the batch, other dynamic dims from `shapes` (whose first value is replaced by the
    batch). A fixed first dim other than `batch` is an error; `batch=None` accepts it (dynamic -> 1)."""
    dims = info.type.tensor_type.shape.dim
    given = shapes.get(info.name)
    shape = []
    for axis, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if axis == 0 and batch is not None and dim.dim_value != batch:
                raise InputError(
                    f"input '{info.name}' has a fixed batch size of {dim.dim_value}; "
                    f"cannot time batch {batch} (use {{batch}} {dim.dim_value})",
                    parameter="batch",
                )
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(batch or 1)
        elif given is not None:
            shape.append(given[axis])
        else:
            raise InputError(
                f"input '{info.name}' has a dynamic dimension {axis} ('{dim.dim_param or '?'}'); "
                f"give its shape with {{shape}} {info.name}=" + "x".join(["1"] + ["N"] * (len(dims) - 1)),
                parameter="shape",
            )
    return tuple(shape)


def check_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Every --shape names an input of the model, with its rank and its static dims (InputError if not)."""
    inputs = {info.name: info for info in graph_inputs(model)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise InputError(
                f"{{shape}} {name}: {path} has no input '{name}' (inputs: {', '.join(inputs)})", parameter="shape"
            )
        dims = inputs[name].type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise InputError(f"{{shape}} {name}: {len(shape)} dims given, the input has {len(dims)}", parameter="shape")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if axis and dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise InputError(
                    f"{{shape}} {name}: dim {axis} is {size}, the model fixes it to {dim.dim_value}", parameter="shape"
                )


def input_feeds(
    model: onnx.ModelProto, batch: int, shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input at `batch` (see `input_shape`)."""
    concrete = {info.name: input_shape(info, batch, shapes) for info in graph_inputs(model)}
    return random_inputs(model, seed, batch, concrete)


def count_macs_params(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """MACs at batch 1 (dynamic input dims from `shapes`) and parameters of a model."""

    static = onnx.ModelProto()
    static.CopyFrom(model)
    for info in graph_inputs(static):
        for dim, size in zip(info.type.tensor_type.shape.dim, input_shape(info, None, shapes)):
            dim.dim_value = size
    try:
        normalized = normalize(static)
    except InputError:
        normalized = static
    return int(sum(model_macs(ModelView(normalized)).values())), int(model_params(model))


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """--shape name=1x3x224x224 (repeatable; a name may contain '=' before the last one)."""
    shapes = {}
    for item in items or ():
        name, _, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise InputError(
                f"{{shape}} {item}: expected NAME=DxDx... with positive sizes, e.g. input=1x3x224x224",
                parameter="shape",
            )
        shapes[name] = shape
    return shapes


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,64' -> (1, 8, 64)."""
    try:
        batches = tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise InputError(
            f"{{batch}} {text}: expected comma-separated positive integers, e.g. 1,8,64", parameter="batch"
        )
    return batches
