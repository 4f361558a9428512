"""Reconstruction without training: refit the kept columns (and bias) of every pruned consumer
layer by ridge-regularized least squares, so that its output on calibration data matches the
unpruned model's output of the same layer (ThiNet / channel pruning, He et al. 2017).

For each layer whose rule's weight layout says `refit` (2-D Conv, Gemm and MatMul) with a
constant weight whose input channels were reduced (grouped and depthwise Convs included: one
independent problem per group, solved together): X = what the layer reads in the pruned network,
Y = the layer's output in the unpruned network on the same batch. The pruned model *is* the input
model with every group gated by the plan (that is what verification proved), so X is read from the
pruned model itself (its consumer inputs added as outputs, on a copy), already restricted to the
kept channels in the order of the sliced weight's columns. A Conv's X is its im2col patch matrix.
The normal equations [X 1]ᵀ[X 1] and [X 1]ᵀY are accumulated in float64 over the batches (memory
bounded by one batch); (AᵀA + λ·mean(diag)·I) W = AᵀY is solved with the ridge on the weight rows only.

Layers are fitted sequentially in network order: layer k's X comes from the network whose layers
before k are already refitted (one streaming pass over the fit batches per layer). Fitting all
layers from one pass over the unreconstructed pruned network was tried first and is unstable on
deep networks: each layer is fitted to inputs that the refitted layers before it no longer
produce, and on ResNet-56 (l1, ratio 0.3) the held-out output error went from 1.2 to 7e15. The last
~20 % of the calibration batches are held out: the output error against the unpruned model is
measured there before and after (after the least-squares refit, BatchNormalization statistics,
where BN is still a node, are recalibrated on the fit batches, see batchnorm.py); when
reconstruction does not lower it, the model is left as it was (`applied: false`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.layers import layer_layout, weight_axes
from onnxprune.analysis.rules.registry import WeightLayout
from onnxprune.model.edit import with_outputs
from onnxprune.model.nbits import packed_weights
from onnxprune.model.nodes import attr, node_label
from onnxprune.model.runtime import make_session
from onnxprune.model.tensors import tensor_value
from onnxprune.model.view import ModelView
from onnxprune.recover.batchnorm import recalibrate_batchnorm

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
    stats: NormalEquations | None = None
    groups: int = 1  # Conv groups in the pruned model (one least-squares problem per group)

    @property
    def name(self) -> str:
        """The node's label."""
        return node_label(self.node)


@dataclass
class NormalEquations:
    """Running AᵀA and AᵀY (float64) of a least-squares problem Y ≈ X W + b, A = [X 1]
    (A = X and b = 0 without `intercept`).

    Rows are either x [R, D] with targets y [R, O] (one problem), or x [R, G, D] with y [R, G, O]:
    G independent problems solved at once, one per convolution group (a depthwise Conv has one
    per channel).
    """

    intercept: bool = True
    ata: np.ndarray | None = None
    aty: np.ndarray | None = None
    rows: int = 0
    grouped: bool = False

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows x [R, D] with targets y [R, O], or x [R, G, D] with y [R, G, O]."""
        self.grouped = x.ndim == 3
        x3 = x if self.grouped else x[:, None, :]
        y3 = (y if self.grouped else y[:, None, :]).astype(np.float64, copy=False)
        a = np.empty(x3.shape[:2] + (x3.shape[2] + int(self.intercept),))
        a[:, :, : x3.shape[2]] = x3
        if self.intercept:
            a[:, :, -1] = 1.0
        ata, aty = np.einsum("rgd,rge->gde", a, a), np.einsum("rgd,rgo->gdo", a, y3)
        if self.ata is None or self.aty is None:  # the first rows (both are set together)
            self.ata, self.aty = ata, aty
        else:
            self.ata += ata
            self.aty += aty
        self.rows += x.shape[0]

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(W [D, O], b [O]) minimizing |Y - XW - b|² + λ·mean(diag XᵀX)·|W|² (per group:
        W [G, D, O], b [G, O])."""
        assert self.ata is not None and self.aty is not None, "rows were added"
        solved = [self._solve_one(ata, aty, ridge) for ata, aty in zip(self.ata, self.aty)]
        w, b = np.stack([s[0] for s in solved]), np.stack([s[1] for s in solved])
        return (w, b) if self.grouped else (w[0], b[0])

    def _solve_one(self, ata: np.ndarray, aty: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        lhs = ata.copy()
        d = lhs.shape[0] - int(self.intercept)
        scale = float(np.mean(np.diag(lhs)[:d])) if d else 0.0
        lhs[np.arange(d), np.arange(d)] += ridge * max(scale, 1e-12)
        try:
            solution = np.linalg.solve(lhs, aty) if ridge > 0 else np.linalg.lstsq(lhs, aty, rcond=None)[0]
        except np.linalg.LinAlgError:
            solution = np.linalg.lstsq(lhs, aty, rcond=None)[0]
        if not self.intercept:
            return solution, np.zeros(solution.shape[1])
        return solution[:-1], solution[-1]


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
            )
        )
    return layers, skipped


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


@dataclass
class Reconstruction:
    """The reconstructed model and what happened."""

    model: onnx.ModelProto
    layers: list[dict]
    skipped: list[str]
    error_before: float
    error_after: float
    applied: bool
    fit_samples: int
    held_out_samples: int
    changed: dict[str, tuple] = field(default_factory=dict)  # tensor -> input-model shape
    batchnorms: int = 0  # BatchNormalization nodes whose statistics were recalibrated

    def to_dict(self, ridge: float) -> dict:
        """The report's `reconstruction` entry."""
        return {
            "output_error_before": self.error_before,
            "output_error_after": self.error_after,
            "applied": self.applied,
            "ridge": ridge,
            "layers": len(self.layers) if self.applied else 0,
            "skipped": self.skipped,
            "fit_samples": self.fit_samples,
            "held_out_samples": self.held_out_samples,
            "batchnorm_recalibrated": self.batchnorms,
            "metric": "relative L2 of the first output vs the unpruned model, held-out batches",
        }


def _split(batches: int) -> int:
    """How many batches are held out for evaluation (0 when there is only one)."""
    return 0 if batches < 2 else max(1, round(0.2 * batches))


def accumulate(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    layers: list[Layer],
    data,
    fit_batches: int,
    seed: int = 0,
    progress=None,
) -> int:
    """Stream the first `fit_batches` calibration batches; fills each layer's NormalEquations.
    Returns the number of samples used."""
    equations = [NormalEquations(intercept=layer.spec.bias is not None) for layer in layers]
    for layer, stats in zip(layers, equations):
        layer.stats = stats
    reads = make_session(with_outputs(pruned, [layer.node.input[0] for layer in layers]), optimize=True)
    targets = make_session(with_outputs(original, [layer.node.output[0] for layer in layers]), optimize=True)
    rng, samples = np.random.default_rng(seed), 0
    for index, (feeds, _) in enumerate(data.batches()):
        if index >= fit_batches:
            break
        x = dict(zip([o.name for o in reads.get_outputs()], reads.run(None, feeds)))
        y = dict(zip([o.name for o in targets.get_outputs()], targets.run(None, feeds)))
        for layer, stats in zip(layers, equations):
            for xs, ys in layer_rows(layer, x[layer.node.input[0]], y[layer.node.output[0]], rng):
                stats.add(xs, ys)
        samples += len(next(iter(feeds.values())))
        if progress:
            progress()
    return samples


def write_fit(model: onnx.ModelProto, layer: Layer, ridge: float) -> dict:
    """Solve one layer and write its kept-column weight (and bias, added when missing) into
    `model`; returns the plan's record of the layer."""
    inits = {init.name: init for init in model.graph.initializer}
    node = next(n for n in model.graph.node if node_label(n) == layer.name)
    old = tensor_value(inits[layer.weight])
    stats = layer.stats
    assert stats is not None, "accumulate() filled the layer's normal equations"
    w, b = stats.solve(ridge)  # w [D, O]
    spec = layer.spec
    alpha, beta = (float(attr(node, a, 1.0)) for a in spec.gain) if spec.gain else (1.0, 1.0)
    if layer.kernel is not None:  # w [G, D, O/G] (grouped) or [D, O]
        new = (w.transpose(0, 2, 1) if w.ndim == 3 else w.T).reshape(old.shape)
        b = b.reshape(-1)
    else:
        new = (w.T if layer.in_axis == 1 else w) / alpha
    inits[layer.weight].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), layer.weight))
    entry = {
        "node": layer.name,
        "op": node.op_type,
        "weight": layer.weight,
        "bias": layer.bias,
        "bias_added": False,
        "rows": stats.rows,
    }
    if spec.bias is None:
        entry["bias"] = None  # no bias input (MatMul): fitted without an intercept
        return entry
    bias = (b / beta).astype(old.dtype)
    if layer.bias is None:
        name = _fresh(f"{layer.weight}__bias", inits)
        model.graph.initializer.append(numpy_helper.from_array(bias, name))
        while len(node.input) <= spec.bias:
            node.input.append("")
        node.input[spec.bias] = name
        if spec.gain:
            _set_attr(node, spec.gain[1], 1.0)
        entry.update(bias=name, bias_added=True)
    else:
        shape = tensor_value(inits[layer.bias]).shape
        inits[layer.bias].CopyFrom(numpy_helper.from_array(bias.reshape(shape), layer.bias))
    return entry


def _fresh(base: str, taken) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            node.attribute.remove(attribute)
            break
    node.attribute.append(helper.make_attribute(name, value))


def output_error(original: onnx.ModelProto, models: list[onnx.ModelProto], data, skip: int) -> list[float]:
    """Relative L2 distance of each model's first output from the original's, over the
    calibration batches after the first `skip`."""
    sessions = [make_session(m, optimize=True) for m in [original, *models]]
    name = original.graph.output[0].name
    diff, norm = np.zeros(len(models)), 0.0
    for index, (feeds, _) in enumerate(data.batches()):
        if index < skip:
            continue
        outs = [s.run([name], feeds)[0].astype(np.float64) for s in sessions]
        norm += float(np.sum(outs[0] ** 2))
        diff += [float(np.sum((o - outs[0]) ** 2)) for o in outs[1:]]
    return [float(np.sqrt(d / norm)) if norm > 0 else float(np.sqrt(d)) for d in diff]


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    weights: dict[str, dict],
    data,
    ridge: float = 1e-4,
    seed: int = 0,
    progress=None,
) -> Reconstruction:
    """Refit the pruned consumer layers of `pruned` (a copy is returned; neither model is
    modified). `weights` is the plan's weights record (which tensors were sliced how)."""
    layers, skipped = find_layers(pruned, weights)
    held_out = _split(data.num_batches)
    fit_batches = data.num_batches - held_out
    fitted = onnx.ModelProto()
    fitted.CopyFrom(pruned)
    fit_samples, records = 0, []
    for layer in layers:  # sequential: layer k reads what the already refitted layers before it compute
        fit_samples = accumulate(original, fitted, [layer], data, fit_batches, seed, progress)
        records.append(write_fit(fitted, layer, ridge))
        layer.stats = None  # free the normal equations
    statistics = recalibrate_batchnorm(fitted, data, fit_batches)
    before, after = output_error(original, [pruned, fitted], data, fit_batches if held_out else 0)
    applied = bool(records or statistics) and after <= before
    held = data.samples - fit_samples if held_out else 0
    changed = _changed(pruned, records, statistics) if applied else {}
    return Reconstruction(
        fitted if applied else pruned,
        records if applied else [],
        skipped,
        before,
        after,
        applied,
        fit_samples,
        held,
        changed,
        len(statistics) // 2 if applied else 0,
    )


def _changed(pruned: onnx.ModelProto, records: list[dict], statistics: list[str]) -> dict[str, tuple]:
    """Tensors of the input model whose values reconstruction changed (added biases excluded)."""
    names = [r["weight"] for r in records] + [r["bias"] for r in records if r["bias"] and not r["bias_added"]]
    names += statistics
    shapes = {init.name: tuple(init.dims) for init in pruned.graph.initializer}
    return {name: shapes[name] for name in names}
