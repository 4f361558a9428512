"""The input shapes the verification runs at, where the model's inputs have dynamic dimensions.

A dynamic first dimension is the batch (1 while probing and for MACs, 2 for the verification).
Every other dynamic dimension gets a size that ONNX Runtime can run the model at, from

1. `--shape` (the user's word wins);
2. a hint the exporter left: ultralytics' `imgsz` metadata for an image input's H and W;
3. a probe: candidate sizes by the kind of dimension (the H/W of a 4-D or 5-D input: 64, 224,
   320, 640; a sequence: 16, 128, 1024, or from 8 for a model of more than 256 MB of weights,
   marked "shortened for a model of N GB"; dims named like height/width or seq/length/time pick
   their kind by name), tried in order at batch 1 on the model until ONNX Runtime runs it.

Dimensions that share a symbolic name share a size (e.g. `input_ids` and `attention_mask`); a
symbol that is some input's first dimension is the batch wherever it appears (a recurrent state
[layers, batch, hidden] follows its input's batch); a symbol that names a sum of others
('past_sequence_length + sequence_length', a decoder's mask over cached and new tokens) is their sum.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.errors import InputError
from onnxprune.model import segments as segmenting
from onnxprune.model.edit import large_weights_as_inputs
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model
from onnxprune.model.segments import weight_bytes
from onnxprune.model.shapes import infer_shapes, tensor_shapes

IMAGE_SIZES = (64, 224, 320, 640)
SEQUENCE_SIZES = (16, 128, 1024)
#: The sequence candidates of a model whose weights exceed segments.SEGMENTED_BYTES (an LLM of
#: several GB: a short sequence is verified as well, at a fraction of the time and memory).
SHORT_SEQUENCE_SIZES = (8, 16, 128, 1024)
VERIFY_BATCH = 2
_IMAGE_NAMES = re.compile(r"height|width|^h$|^w$|img|image|spatial", re.I)
_SEQUENCE_NAMES = re.compile(r"seq|len|token|time|frame|step|sample|text|word|char", re.I)


@dataclass
class VerificationShapes:
    """Concrete input shapes at batch 1 (`shapes`) and how each input's was chosen (`sources`:
    'static', '--shape', 'hint: …', 'probe: …')."""

    shapes: dict[str, tuple] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    #: input -> the axes that hold the dynamic batch (the first, and any with the batch's symbol)
    batch_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def is_dynamic(self) -> bool:
        """True when some input dimension is dynamic (its size was chosen here)."""
        return any(source != "static" for source in self.sources.values())

    def at_batch(self, batch: int) -> dict[str, tuple]:
        """The shapes with each dynamic batch dimension set to `batch`."""
        return {
            name: tuple(batch if axis in self.batch_axes.get(name, ()) else size for axis, size in enumerate(shape))
            for name, shape in self.shapes.items()
        }

    def verify_shapes(self) -> dict[str, tuple]:
        """The shapes the verification feeds have (dynamic batch dims 2)."""
        return self.at_batch(VERIFY_BATCH)

    def to_dict(self) -> dict:
        """JSON-ready: per input, the verification shape, the MACs shape (batch 1) and the source."""
        verify = self.verify_shapes()
        return {
            name: {"shape": list(verify[name]), "macs_shape": list(shape), "source": self.sources[name]}
            for name, shape in self.shapes.items()
        }

    def describe(self) -> str:
        """One line: 'x=2x3x64x64 (probe: …)'."""
        verify = self.verify_shapes()
        return ", ".join(f"{name}={'x'.join(map(str, verify[name]))} ({self.sources[name]})" for name in verify)


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    consts = {init.name for init in model.graph.initializer}
    return [info for info in model.graph.input if info.name not in consts]


def _dims(info: onnx.ValueInfoProto) -> list:
    """Each dim as an int (static) or a str (its symbol, '' when unnamed): a negative dim_value is dynamic."""
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else d.dim_param
        for d in info.type.tensor_type.shape.dim
    ]


def _kind(info: onnx.ValueInfoProto, axis: int, symbol: str) -> str:
    """'image' (spatial dims of a 4-D/5-D input) or 'sequence'; a dim's name decides first."""
    if _IMAGE_NAMES.search(symbol or ""):
        return "image"
    if _SEQUENCE_NAMES.search(symbol or ""):
        return "sequence"
    rank = len(info.type.tensor_type.shape.dim)
    return "image" if rank >= 4 and axis >= 2 else "sequence"


def metadata_image_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(H, W) from ultralytics' `imgsz` metadata ('[320, 320]' or '640'), else None."""
    text = {p.key: p.value for p in model.metadata_props}.get("imgsz")
    if not text:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    sizes = [value, value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else []
    if len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
        return None
    return int(sizes[0]), int(sizes[1])


def check_user_shapes(model: onnx.ModelProto, shapes: dict[str, tuple]) -> None:
    """Every --shape names an input, with its rank and its static dims (InputError otherwise)."""
    inputs = {info.name: info for info in _inputs(model)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise InputError(
                f"{{shape}} {name}: the model has no input '{name}' (inputs: {', '.join(inputs)})", parameter="shape"
            )
        dims = _dims(inputs[name])
        if len(shape) != len(dims):
            raise InputError(f"{{shape}} {name}: {len(shape)} dims given, the input has {len(dims)}", parameter="shape")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if isinstance(dim, int) and dim != size:
                raise InputError(
                    f"{{shape}} {name}: dim {axis} is {size}, the model fixes it to {dim}", parameter="shape"
                )


def choose_shapes(
    model: onnx.ModelProto, user: dict[str, tuple] | None = None, probe: bool = True
) -> VerificationShapes:
    """The verification shapes of a (normalized) model; see the module docstring. Probes with
    ONNX Runtime only when a non-batch dimension is dynamic and no hint or --shape fixes it
    (`probe=False`: the hint or the first candidates, untested)."""
    user = dict(user or {})
    check_user_shapes(model, user)
    result = VerificationShapes()
    open_dims: dict[str, list] = {}  # input -> [(axis, symbol, kind)] still to choose
    batch_symbols = {dims[0] for dims in map(_dims, _inputs(model)) if dims and isinstance(dims[0], str) and dims[0]}
    for info in _inputs(model):
        dims = _dims(info)
        batch = tuple(
            axis for axis, d in enumerate(dims) if not isinstance(d, int) and (axis == 0 or d in batch_symbols)
        )
        if batch:
            result.batch_axes[info.name] = batch
        if info.name in user:
            result.shapes[info.name] = tuple(1 if axis in batch else size for axis, size in enumerate(user[info.name]))
            result.sources[info.name] = "--shape"
            continue
        result.shapes[info.name] = tuple(d if isinstance(d, int) else 1 for d in dims)
        result.sources[info.name] = "static, dynamic batch" if batch else "static"
        rest = [
            (axis, d, _kind(info, axis, d))
            for axis, d in enumerate(dims)
            if not isinstance(d, int) and axis not in batch
        ]
        if rest:
            open_dims[info.name] = rest
    if open_dims:
        _fill_open_dims(model, result, open_dims, _symbols_from_user(model, user), probe, _sequence_sizes(model))
    return result


def _sequence_sizes(model: onnx.ModelProto) -> tuple[tuple[int, ...], str]:
    """The sequence candidates for the model's size, and the note a shortened choice carries."""
    size = weight_bytes(model)
    if size <= segmenting.SEGMENTED_BYTES:
        return SEQUENCE_SIZES, ""
    return SHORT_SEQUENCE_SIZES, f" (shortened for a model of {size / 1e9:.1f} GB)"


def _symbols_from_user(model: onnx.ModelProto, user: dict[str, tuple]) -> dict[str, int]:
    """Sizes the user's --shape gave to named symbols (other inputs with the same symbol follow)."""
    known = {}
    for info in _inputs(model):
        if info.name in user:
            for axis, dim in enumerate(_dims(info)):
                if axis and isinstance(dim, str) and dim:
                    known[dim] = user[info.name][axis]
    return known


def _fill_open_dims(
    model,
    result: VerificationShapes,
    open_dims: dict,
    known: dict[str, int],
    probe: bool = True,
    sequences: tuple[tuple[int, ...], str] = (SEQUENCE_SIZES, ""),
) -> None:
    """Give every open dim a size: a hint when there is one (and it runs), else the first probe
    that runs (`sequences`: the sequence candidates and the note that says they were shortened)."""
    sequence_sizes, note = sequences
    hint = metadata_image_size(model)
    if hint is not None and all(kind == "image" for dims in open_dims.values() for _, _, kind in dims):
        image_size = hint
        _assign(result, open_dims, known, lambda kind, index: image_size[index % 2])
        if not probe or _runs(model, result.shapes) is None:
            _mark(result, open_dims, f"hint: metadata imgsz {list(hint)}")
            return
    if not probe:
        _assign(result, open_dims, known, lambda kind, index: IMAGE_SIZES[0] if kind == "image" else sequence_sizes[0])
        _mark(result, open_dims, "first candidate, not run (no verification)")
        return
    errors = []
    attempts = max(len(IMAGE_SIZES), len(sequence_sizes))
    for attempt in range(attempts):

        def size(kind, index, attempt=attempt):
            sizes = IMAGE_SIZES if kind == "image" else sequence_sizes
            return sizes[min(attempt, len(sizes) - 1)]

        _assign(result, open_dims, known, size)
        error = _runs(model, result.shapes)
        if error is None:
            kinds = {kind for dims in open_dims.values() for _, _, kind in dims}
            tried = _tried(kinds, attempt, sequence_sizes)
            shortened = note if "sequence" in kinds else ""
            _mark(result, open_dims, f"probe: first size ONNX Runtime runs, of {tried}{shortened}")
            return
        errors.append(error)
    tried = ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in result.shapes.items())
    raise InputError(
        f"ONNX Runtime cannot run the model at any probed input size (last: {tried}: {errors[-1]}); "
        "give the input shape with {shape} NAME=DxDx...",
        parameter="shape",
    )


def _assign(result: VerificationShapes, open_dims: dict, known: dict[str, int], size) -> None:
    """Set each open dim to `size(kind, index among the input's open dims)`; one size per symbol.
    A symbol that is a sum of others ('past_sequence_length + sequence_length': a decoder's
    attention mask over the cached and the new tokens) is their sum, once they are chosen."""
    chosen = dict(known)
    for sums in (False, True):
        for name, dims in open_dims.items():
            shape = list(result.shapes[name])
            for index, (axis, symbol, kind) in enumerate(dims):
                if (_sum_terms(symbol) is not None) != sums:
                    continue
                value = chosen.get(symbol) if symbol else None
                value = _symbol_sum(symbol, chosen) if value is None else value
                shape[axis] = value if value is not None else size(kind, index)
                if symbol:
                    chosen[symbol] = shape[axis]
            result.shapes[name] = tuple(shape)


def _sum_terms(symbol: str) -> list[str] | None:
    """The terms of a symbol 'a + b + 1' (None when it is not a sum)."""
    terms = [t.strip() for t in (symbol or "").split("+")]
    return terms if len(terms) > 1 and all(terms) else None


def _symbol_sum(symbol: str, chosen: dict[str, int]) -> int | None:
    """The value of a sum symbol from the chosen sizes (None when a term is unknown)."""
    terms = _sum_terms(symbol)
    if terms is None:
        return None
    values = [int(t) if t.isdigit() else chosen.get(t) for t in terms]
    return sum(v for v in values if v is not None) if all(v is not None for v in values) else None


def _mark(result: VerificationShapes, open_dims: dict, source: str) -> None:
    for name in open_dims:
        result.sources[name] = source


def _tried(kinds: set[str], attempt: int, sequence_sizes: tuple[int, ...]) -> str:
    lists = [
        ("H/W " if kind == "image" else "sequence ") + "/".join(map(str, sizes[: attempt + 1]))
        for kind, sizes in (("image", IMAGE_SIZES), ("sequence", sequence_sizes))
        if kind in kinds
    ]
    return ", ".join(lists)


def _runs(model: onnx.ModelProto, shapes: dict[str, tuple]) -> str | None:
    """None when ONNX Runtime runs the model on random inputs of these shapes, else its error."""

    try:
        run_model(model, random_inputs(model, 0, batch=1, shapes=shapes))
    except InputError as exc:
        return str(exc)
    return None


def macs_shapes(model: onnx.ModelProto, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Shapes of every tensor of `model` with its graph inputs fixed to `shapes` (inferred on a
    light copy: large weights stand in as typed inputs); {} when inference fails."""

    light = large_weights_as_inputs(model)
    for info in light.graph.input:
        shape = shapes.get(info.name)
        if shape is None:
            continue
        dims = info.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    del light.graph.value_info[:]
    try:
        inferred = infer_shapes(light)
    except InputError:
        return {}
    return {
        name: shape
        for name, shape in tensor_shapes(inferred).items()
        if all(isinstance(d, (int, np.integer)) for d in shape)
    }
