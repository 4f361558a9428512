"""The layers reconstruction refits: which consumer layers of the pruned model read fewer
channels and can be refitted (or why not), where each one's least-squares target comes from, and
their rows (a Conv's im2col patch matrix)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.layers import layer_layout, weight_axes
from onnxprune.analysis.rules.registry import WeightLayout
from onnxprune.model.nbits import packed_weights
from onnxprune.model.nodes import attr, node_label
from onnxprune.model.view import ModelView
from onnxprune.recover.ridge import NormalEquations

#: at most this many output positions per sample enter a Conv's normal equations (seeded subsample)
MAX_POSITIONS = 1024
#: rows x columns of one im2col chunk (float64), bounding memory
CHUNK_ELEMENTS = 4_000_000


@dataclass
class Layer:
    """One consumer layer to refit: where its input/output are, its weight layout (`spec`: the
    op's, from its rule) and the original output channels it keeps (None: all)."""

    node: onnx.NodeProto
    weight: str
    bias: str | None
    in_axis: int
    out_kept: np.ndarray | None
    spec: WeightLayout
    kernel: tuple[int, int] | None = None
    stats: NormalEquations | None = None  # the fit rows' equations
    groups: int = 1  # Conv groups in the pruned model (one least-squares problem per group)
    held: NormalEquations | None = None  # the held-out rows' equations (choosing λ, accepting the refit)
    #: (Add output, the Add's other operand) when the layer's output only feeds an Add of two
    #: activations (a residual sum): the target is then the unpruned sum minus the pruned other operand
    residual: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        """The node's label."""
        return node_label(self.node)


def conv_geometry(node: onnx.NodeProto) -> tuple[tuple, tuple, tuple]:
    """Strides, pads (top, left, bottom, right) and dilations of a 2-D Conv."""
    strides = tuple(attr(node, "strides", [1, 1]))
    dilations = tuple(attr(node, "dilations", [1, 1]))
    pads = tuple(attr(node, "pads", [0, 0, 0, 0]))
    return strides, pads, dilations


def im2col(x: np.ndarray, kernel: tuple[int, int], strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)) -> np.ndarray:
    """Patches of an NCHW tensor as rows [N·Ho·Wo, C·kh·kw], columns in the order of
    `weight.reshape(O, -1)`; rows in (n, ho, wo) order."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            cols[:, :, :, :, i, j] = window.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * kh * kw)


def find_layers(pruned: onnx.ModelProto, weights: dict[str, dict]) -> tuple[list[Layer], list[str]]:
    """Consumer layers of the pruned model whose input channels were reduced (network order),
    and a note for each such layer that cannot be refitted."""
    view = ModelView(pruned)
    layers, skipped = [], []
    packed = packed_weights(pruned.graph)
    for node in pruned.graph.node:
        spec = layer_layout(node)
        if (
            spec is not None
            and node.input[spec.weight] in packed
            and weights.get(node.input[spec.weight], {}).get("kept", {}).get(str(spec.in_axis))
        ):
            skipped.append(f"{node_label(node)}: its weight is stored packed ({node.op_type}); refitting is not done")
            continue
        if spec is None or not spec.refit or len(node.input) <= spec.weight:
            continue
        weight = node.input[spec.weight]
        record = weights.get(weight)
        layout = weight_axes(node, view)
        if record is None and layout is not None and _chain_sources(view, weight) & set(weights):
            skipped.append(
                f"{node_label(node)}: its weight is stored through a chain (int8/fp16 → Cast/"
                "DequantizeLinear); refitting it would store it as float"
            )
            continue
        if record is None or layout is None or not _input_reduced(node, spec, layout, record):
            continue
        problem = _unsupported(node, spec, view)
        if problem:
            skipped.append(f"{node_label(node)}: {problem}")
            continue
        in_axis, out_axis = layout
        out_kept = record["kept"].get(str(out_axis))
        kernel = tuple(view.consts[weight].shape[2:]) if spec.kernel else None  # the weight is a constant
        layers.append(
            Layer(
                node,
                weight,
                _bias(node, spec),
                in_axis,
                None if out_kept is None else np.asarray(out_kept),
                spec,
                kernel,
                groups=int(attr(node, "group", 1)) if spec.grouped else 1,
                residual=residual_sum(view, node, pruned),
            )
        )
    return layers, skipped


def residual_sum(view: ModelView, node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[str, str] | None:
    """(Add output, other operand) when `node`'s only output feeds exactly one Add whose other
    operand is an activation (a residual connection), else None.

    Fitting such a layer to the unpruned network's Add output minus what the other branch carries
    in the pruned network makes the sum match, so that the drift the identity path carries from
    the blocks before is corrected here instead of being passed on (fitting the layer's own output
    leaves the sum off by exactly that drift, block after block)."""
    out = node.output[0]
    users = view.consumers.get(out, [])
    if len(users) != 1 or users[0].op_type != "Add" or out in {o.name for o in model.graph.output}:
        return None
    add = users[0]
    if len(add.input) != 2 or add.input[0] == add.input[1]:
        return None
    other = add.input[1] if add.input[0] == out else add.input[0]
    if view.is_const(other) or other in {i.name for i in model.graph.input}:
        return None
    return add.output[0], other


def _bias(node: onnx.NodeProto, spec: WeightLayout) -> str | None:
    """The layer's bias input, or None (absent, or the op has none)."""
    index = spec.bias
    return node.input[index] if index is not None and len(node.input) > index and node.input[index] else None


def _chain_sources(view: ModelView, name: str) -> set[str]:
    """The initializers a weight chain (int8 → Cast → Mul, DequantizeLinear…) computes `name`
    from; empty when `name` is an initializer or an activation."""
    sources, todo = set(), [name]
    while todo:
        tensor = todo.pop()
        node = view.producer.get(tensor)
        if node is None:
            sources.add(tensor)
        elif view.is_const(tensor):
            todo.extend(n for n in node.input if n)
    return sources - {name}


def _input_reduced(node: onnx.NodeProto, spec: WeightLayout, axes: tuple[int, int], record: dict) -> bool:
    """Whether the layer reads fewer channels than before: its weight's input axis was sliced, or
    (grouped convolution, where whole groups are pruned) its output axis."""
    if str(axes[0]) in record["kept"]:
        return True
    return spec.grouped and attr(node, "group", 1) > 1 and str(axes[1]) in record["kept"]


def _unsupported(node: onnx.NodeProto, spec: WeightLayout, view: ModelView) -> str | None:
    """Why a layer is not refitted, or None."""
    name, op = node.input[spec.weight], node.op_type
    weight, users = view.consts[name], view.consumers.get(name, [])
    if len(users) > 1:
        return "weight shared with other nodes"
    if weight.dtype != np.float32:
        return f"weight dtype {weight.dtype} (float32 only)"
    if spec.kernel:
        if weight.ndim != 4:
            return "not a 2-D convolution"
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            return "auto_pad SAME_* (explicit pads only)"
    if spec.input_transposed_by and attr(node, spec.input_transposed_by, 0):
        return f"{op} with {spec.input_transposed_by}=1"
    bias = _bias(node, spec)
    if bias and (not view.is_const(bias) or view.consts[bias].size != weight.shape[spec.axes(node)[1]]):
        return f"{op} bias {_input_name(op, spec.bias or 0)} is not a per-output vector"
    if spec.gain and float(attr(node, spec.gain[0], 1.0)) == 0.0:
        return f"{op} with {spec.gain[0]}=0"
    if spec.gain and bias and float(attr(node, spec.gain[1], 1.0)) == 0.0:
        return f"{op} with {spec.gain[1]}=0"
    return None


def _input_name(op: str, index: int) -> str:
    """The ONNX specification's name of input `index` of `op` (Gemm's bias: C)."""
    try:
        return onnx.defs.get_schema(op).inputs[index].name
    except (onnx.defs.SchemaError, IndexError):
        return str(index)


def layer_rows(
    layer: Layer, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, max_positions: int = MAX_POSITIONS
):
    """(X rows, Y rows) of one batch, chunked so memory stays bounded."""
    node = layer.node
    if layer.kernel is None:
        xs = x.reshape(-1, x.shape[-1])
        ys = y.reshape(-1, y.shape[-1])
        if layer.out_kept is not None:
            ys = ys[:, layer.out_kept]
        yield xs, ys
        return
    kernel = layer.kernel
    strides, pads, dilations = conv_geometry(node)
    per_sample = max(1, CHUNK_ELEMENTS // max(1, x.shape[1] * kernel[0] * kernel[1] * y.shape[2] * y.shape[3]))
    for start in range(0, x.shape[0], per_sample):
        patches = im2col(x[start : start + per_sample], kernel, strides, pads, dilations)
        target = y[start : start + per_sample].transpose(0, 2, 3, 1).reshape(patches.shape[0], -1)
        if layer.out_kept is not None:
            target = target[:, layer.out_kept]
        positions = y.shape[2] * y.shape[3]
        if positions > max_positions:
            count = patches.shape[0] // positions
            pick = np.concatenate(
                [k * positions + rng.choice(positions, max_positions, replace=False) for k in range(count)]
            )
            patches, target = patches[pick], target[pick]
        if layer.groups > 1:  # group g reads input channels and writes outputs of its own block
            patches = patches.reshape(patches.shape[0], layer.groups, -1)
            target = target.reshape(target.shape[0], layer.groups, -1)
        yield patches, target
