"""Reconstruction without training: refit the kept columns (and bias) of every pruned consumer
layer by ridge-regularized least squares, so that its output on calibration data matches the
unpruned model's (ThiNet / channel pruning, He et al. 2017).

For each layer whose rule's weight layout says `refit` (2-D Conv, Gemm and MatMul) with a
constant weight whose input channels were reduced (grouped and depthwise Convs included: one
independent problem per group, solved together; see layers.py): X = what the layer reads in the
pruned network, Y = the layer's output in the unpruned network on the same batch, or, for a layer
whose output only feeds a residual Add, the unpruned Add output minus the Add's other operand in
the pruned network (so the sum matches and the drift the identity path carries is corrected in
every block; fitting the layer's own output on ResNet-56, L1, ratio 0.5, 256 images: 36.8 % top-1,
the residual sum: 49.5 %). The pruned model *is* the input model with every group gated by the
plan, so X is read from the pruned model itself (its consumer inputs added as outputs, on a copy),
already restricted to the kept channels in the order of the sliced weight's columns. A Conv's X
is its im2col patch matrix. The normal equations are accumulated in float64 over the batches
(memory bounded by one batch), see ridge.py.

The ridge: every HOLD_EVERY-th sample of the fit batches is held out of the layer's fit; λ is the
value of `RIDGE_GRID` whose fit has the lowest error on those samples (with `ridge` given, that one
λ), the layer is refitted with it on all fit samples, and the refit is written only when its
held-out error is below that of the layer's pruned weights (else the layer keeps them). On
ResNet-56 the chosen λ grows with depth, from 0–1e-3 in the first stage to 0.1–1 in the last (the
former fixed 1e-4 overfits the deep layers).

Layers are fitted sequentially in network order: layer k's X comes from the network whose layers
before k are already refitted (one streaming pass over the fit batches per layer; the batches
are kept in memory when they fit in CACHE_BYTES). Fitting all layers from one pass over the
unreconstructed pruned network was tried first and is unstable on deep networks: each layer is
fitted to inputs that the refitted layers before it no longer produce, and on ResNet-56 (l1,
ratio 0.3) the held-out output error went from 1.2 to 7e15. The last ~20 % of the calibration
batches are held out: the output error against the unpruned model is measured there before and
after (after the least-squares refit, BatchNormalization statistics, where BN is still a node,
are recalibrated on the fit batches, see batchnorm.py); when reconstruction does not lower it,
the model is left as it was (`applied: false`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.model.edit import only_outputs
from onnxprune.model.runtime import make_session
from onnxprune.recover.batchnorm import recalibrate_batchnorm
from onnxprune.recover.layerfit import current_solution, write_fit
from onnxprune.recover.layers import Layer, conv_geometry, find_layers, im2col, layer_rows
from onnxprune.recover.ridge import DEFAULT_RIDGE, RIDGE_GRID, NormalEquations, choose_ridge

__all__ = ["NormalEquations", "Reconstruction", "conv_geometry", "im2col", "reconstruct"]

#: every HOLD_EVERY-th sample of the fit batches is held out to choose a layer's λ and accept its refit
HOLD_EVERY = 4
#: calibration batches up to this many bytes are kept in memory for the per-layer passes
CACHE_BYTES = 256 * 2**20


@dataclass
class Reconstruction:
    """The reconstructed model and what happened (`choices`: per refittable layer, the λ chosen
    and its held-out errors, whether its refit was taken)."""

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
    choices: list[dict] = field(default_factory=list)
    ridge: float = DEFAULT_RIDGE  # the fixed λ, or in auto mode the λ of layers with no held-out rows
    selection: str = "fixed"  # or "held-out": λ chosen per layer

    def to_dict(self, ridge: float | None = None) -> dict:
        """The report's `reconstruction` entry (`ridge`: what to record as the ridge, default the
        one used)."""
        return {
            "output_error_before": self.error_before,
            "output_error_after": self.error_after,
            "applied": self.applied,
            "ridge": self.ridge if ridge is None else ridge,
            "ridge_selection": self.selection,
            "layers": len(self.layers) if self.applied else 0,
            "layers_kept_as_pruned": sum(not c["accepted"] for c in self.choices),
            "per_layer": self.choices,
            "skipped": self.skipped,
            "fit_samples": self.fit_samples,
            "held_out_samples": self.held_out_samples,
            "batchnorm_recalibrated": self.batchnorms,
            "metric": "relative L2 of the first output vs the unpruned model, held-out batches",
            "per_layer_metric": "relative L2 of the layer's target (its unpruned output, or the unpruned "
            "residual sum minus the pruned other branch), held-out samples of the fit batches",
        }


def _split(batches: int) -> int:
    """How many batches are held out for evaluation (0 when there is only one)."""
    return 0 if batches < 2 else max(1, round(0.2 * batches))


@dataclass
class CachedBatches:
    """Calibration batches kept in memory, so that the per-layer passes decode them once."""

    kept: list
    samples: int
    num_batches: int

    def batches(self):
        """The batches, as `CalibrationData.batches` yields them."""
        yield from self.kept


def cached(data, limit: int = CACHE_BYTES):
    """`data` with its batches in memory when they take at most `limit` bytes, else `data`."""
    kept, size = [], 0
    for feeds, labels in data.batches():
        size += sum(value.nbytes for value in feeds.values())
        if size > limit:
            return data
        kept.append((feeds, labels))
    return CachedBatches(kept, data.samples, data.num_batches)


def layer_target(layer: Layer, x: dict, y: dict) -> np.ndarray:
    """What the layer should output on one batch: the unpruned layer output, or for a layer
    feeding a residual Add, the unpruned sum minus the pruned other branch (see `residual_sum`),
    in the unpruned layer's channel layout (`layer_rows` keeps the pruned layer's channels)."""
    own = y[layer.node.output[0]]
    if layer.residual is None or layer.residual[0] not in y:
        return own
    total, other = y[layer.residual[0]], x[layer.residual[1]]
    axis = 1 if layer.kernel is not None else own.ndim - 1
    index = (slice(None),) * axis + (slice(None) if layer.out_kept is None else layer.out_kept,)
    if total.shape != own.shape or total[index].shape != other.shape:
        return own  # a broadcasting Add: fit the layer's own output
    target = total.copy()
    target[index] -= other
    return target


def _held(start: int, count: int) -> np.ndarray:
    """Which samples of a fit batch are held out for the per-layer choice (every HOLD_EVERY-th)."""
    return np.arange(start, start + count) % HOLD_EVERY == HOLD_EVERY - 1


def accumulate(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    layers: list[Layer],
    data,
    fit_batches: int,
    seed: int = 0,
    progress=None,
) -> int:
    """Stream the first `fit_batches` calibration batches; fills each layer's NormalEquations
    (`stats`: the fit samples, `held`: every HOLD_EVERY-th sample). Returns the number of samples."""
    for layer in layers:
        layer.stats = NormalEquations(intercept=layer.spec.bias is not None)
        layer.held = NormalEquations(intercept=layer.spec.bias is not None)
    read_names = [n for layer in layers for n in [layer.node.input[0], *(layer.residual or ())[1:]]]
    known = {o for node in original.graph.node for o in node.output}
    target_names = [n for layer in layers for n in [layer.node.output[0], *(layer.residual or ())[:1]] if n in known]
    reads = make_session(only_outputs(pruned, list(dict.fromkeys(read_names))), optimize=True)
    targets = make_session(only_outputs(original, list(dict.fromkeys(target_names))), optimize=True)
    rng, samples = np.random.default_rng(seed), 0
    for index, (feeds, _) in enumerate(data.batches()):
        if index >= fit_batches:
            break
        x = dict(zip([o.name for o in reads.get_outputs()], reads.run(None, feeds)))
        y = dict(zip([o.name for o in targets.get_outputs()], targets.run(None, feeds)))
        count = len(next(iter(feeds.values())))
        for layer in layers:
            inputs, target = x[layer.node.input[0]], layer_target(layer, x, y)
            parts: list = [(slice(None), layer.stats)]  # a batch axis other than 0: no held-out rows
            if inputs.shape[0] == count == target.shape[0]:
                held = _held(samples, count)
                parts = [(~held, layer.stats), (held, layer.held)]
            for part, stats in parts:
                if isinstance(part, slice) or part.any():
                    for xs, ys in layer_rows(layer, inputs[part], target[part], rng):
                        stats.add(xs, ys)
        samples += count
        if progress:
            progress()
    return samples


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


def refit_layers(original, fitted, layers, data, fit_batches, grid, seed=0, progress=None):
    """Refit `layers` of `fitted` in place, sequentially (layer k reads what the already refitted
    layers before it compute), each with the λ of `grid` that `choose_ridge` picks and only where
    that lowers its held-out error. Returns (plan records, per-layer choices, fit samples)."""
    records, choices, fit_samples = [], [], 0
    for layer in layers:
        fit_samples = accumulate(original, fitted, [layer], data, fit_batches, seed, progress)
        assert layer.stats is not None and layer.held is not None, "accumulate() filled them"
        choice = choose_ridge(layer.stats, layer.held, current_solution(fitted, layer), grid)
        entry = {"node": layer.name, "target": "residual sum" if layer.residual else "layer output"}
        choices.append(entry | choice.record())
        if choice.accepted and choice.solution is not None:
            rows = layer.stats.rows + layer.held.rows
            records.append(write_fit(fitted, layer, choice.solution, rows) | choice.record())
        layer.stats = layer.held = None  # free the normal equations
    return records, choices, fit_samples


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    weights: dict[str, dict],
    data,
    ridge: float | None = None,
    seed: int = 0,
    progress=None,
) -> Reconstruction:
    """Refit the pruned consumer layers of `pruned` (a copy is returned; neither model is
    modified). `weights` is the plan's weights record (which tensors were sliced how); `ridge`:
    one λ for every layer, or None to choose it per layer from held-out error."""
    layers, skipped = find_layers(pruned, weights)
    data = cached(data)
    held_out = _split(data.num_batches)
    fit_batches = data.num_batches - held_out
    fitted = onnx.ModelProto()
    fitted.CopyFrom(pruned)
    grid = RIDGE_GRID if ridge is None else (ridge,)
    records, choices, fit_samples = refit_layers(original, fitted, layers, data, fit_batches, grid, seed, progress)
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
        choices,
        DEFAULT_RIDGE if ridge is None else ridge,
        "held-out" if ridge is None else "fixed",
    )


def _changed(pruned: onnx.ModelProto, records: list[dict], statistics: list[str]) -> dict[str, tuple]:
    """Tensors of the input model whose values reconstruction changed (added biases excluded)."""
    names = [r["weight"] for r in records] + [r["bias"] for r in records if r["bias"] and not r["bias_added"]]
    names += statistics
    shapes = {init.name: tuple(init.dims) for init in pruned.graph.initializer}
    return {name: shapes[name] for name in names}
