"""Budgets: a FLOPs (MACs), parameter or latency target, and the prices a strategy compares with it.

`PlanCost` prices any plan (MACs and parameters) exactly without rewriting the model: a layer's
MACs scale with the kept share of its weight tensor. `LatencyMeter` times the model a plan
produces (ONNX Runtime, CPU, batch 1, side by side with the unpruned model) for latency targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis import ChannelGroup, Space
from onnxprune.analysis.analyze import Analysis
from onnxprune.analysis.cost import model_macs, model_params, unscaled_macs
from onnxprune.analysis.layers import layer_weight
from onnxprune.bench.latency import interleaved, make_session
from onnxprune.errors import InputError
from onnxprune.model.inputs import random_inputs
from onnxprune.model.nbits import packed_weights
from onnxprune.model.nodes import node_label
from onnxprune.passes.apply_plan import apply_plan, cache_slices
from onnxprune.select.plan import PruningPlan

#: Relative tolerance of a target: the achieved value may sit this far below it, never above.
TOLERANCE = 0.02
#: Unit suffixes of absolute targets.
UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@dataclass
class Budget:
    """A target for the pruned model: `kind` flops (MACs), params or latency (ms)."""

    kind: str
    target: float
    baseline: float

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {
            "kind": self.kind,
            "target": self.target,
            "baseline": self.baseline,
            "fraction": self.target / self.baseline if self.baseline else None,
        }


def parse_budget(kind: str, text: str, baseline: float) -> Budget:
    """'0.5' (a fraction of the original), '2.1G', '500k' (absolute); latency in milliseconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([kKMGT]?)\s*(ms)?\s*", str(text))
    if not match:
        raise InputError(
            f"{{target_{kind}}}: cannot read '{text}' (e.g. 0.5, 2.1G, 500k, 4.5)", parameter=f"target_{kind}"
        )
    value, unit = float(match.group(1)), match.group(2)
    if kind != "latency" and not unit and 1.0 < value < 100.0:
        raise InputError(
            f"--target-{kind} {text}: a fraction must be in (0, 1]; absolute values take a "
            "unit (2.1G, 500k) or are whole counts"
        )
    if kind != "latency" and not unit and value <= 1.0:
        value *= baseline
    else:
        value *= UNITS[unit]
    if value <= 0 or (kind != "latency" and value > baseline):
        raise InputError(
            f"{{target_{kind}}} {text}: must be positive and at most the model's {baseline:.4g}",
            parameter=f"target_{kind}",
        )
    return Budget(kind, value, baseline)


class PlanCost:
    """MACs and parameters of the model a plan would produce, computed from kept shares."""

    def __init__(self, analysis: Analysis, shapes: dict | None = None):
        self.groups = [g for g in analysis.groups if g.prunable]
        self.macs = model_macs(analysis.view, shapes)  # shapes: at the verification shape (analysis/cost.py)
        self.base_params = model_params(analysis.model)
        self.sizes = {name: int(v.size) for name, v in analysis.view.consts.items()}
        self.sizes.update(packed_weights(analysis.view.graph))  # parameters, not packed bytes
        nodes = analysis.view.graph.node
        self.node_weight = {node_label(n): w for n in nodes if (w := layer_weight(n, analysis.view))}
        #: the part of each layer's MACs that no pruning shrinks (an LSTM's recurrent product)
        self.unscaled = {node_label(n): unscaled_macs(n, analysis.view, shapes) for n in nodes}
        self.axes: dict[str, list[tuple[ChannelGroup, Space]]] = {}
        for group in self.groups:
            for space in group.spaces:
                if space.tensor in self.sizes:
                    self.axes.setdefault(space.tensor, []).append((group, space))

    def kept_fractions(self, plan: PruningPlan) -> dict[str, float]:
        """Share of each sliced weight tensor that the plan keeps."""
        masks = {}
        for group in self.groups:
            mask = np.zeros(group.channels, bool)
            mask[plan.kept.get(group.id, np.arange(group.channels))] = True
            masks[group.id] = mask
        return {
            tensor: float(np.prod([masks[g.id][g.channel_of[s]].mean() for g, s in axes]))
            for tensor, axes in self.axes.items()
        }

    def cost(self, plan: PruningPlan) -> dict[str, float]:
        """{'flops': MACs, 'params': parameters} of the pruned model."""
        share = self.kept_fractions(plan)
        macs = sum(
            self.unscaled[n] + (m - self.unscaled[n]) * share.get(self.node_weight.get(n, ""), 1.0)
            for n, m in self.macs.items()
        )
        params = self.base_params - sum(self.sizes[t] * (1 - f) for t, f in share.items())
        return {"flops": macs, "params": params}


class LatencyMeter:
    """Median ONNX Runtime CPU latency (ms, batch 1) of the model a plan produces, timed side by
    side with the unpruned model: the unpruned model's median (measured once, `reference`) times
    the ratio of the two medians over interleaved blocks. Load that drifts between measurements
    (a shared machine) then moves both models alike instead of the answer. The unpruned model's
    session is made once and stays warm; a fresh session runs `warmup` times before it is timed
    (its first runs are several times slower). Sessions do not spin: two sessions whose idle
    threads spin-wait on a 2-core machine measured the same pair at ratios from 0.5 to 1.5;
    without spinning, within ±10 %."""

    def __init__(self, analysis: Analysis, warmup: int = 10, iters: int = 20):
        shapes = getattr(analysis, "shapes", None)  # the verification shapes, batch 1
        self.analysis, self.warmup, self.iters = analysis, warmup, iters
        self.feeds = random_inputs(analysis.model, batch=1, shapes=shapes.shapes if shapes else None)
        self.reference: float | None = None
        self.session = None

    def __call__(self, plan: PruningPlan) -> float:
        model = self.analysis.model
        if self.session is None:
            self.session = make_session(model, spin=False)
            self.reference = float(np.median(interleaved([self.session], self.feeds, self.warmup, 2 * self.iters)[0]))
        assert self.reference is not None
        if all(len(kept) == g.channels for g in plan.groups if (kept := plan.kept.get(g.id)) is not None):
            return 1000.0 * self.reference
        pruned = make_session(apply_plan(model, plan, self.analysis.view).model, spin=False)
        # a KV cache's past inputs: the kept heads
        feeds = [self.feeds, cache_slices(model, plan).arrays(self.feeds)]
        full, cut = interleaved([self.session, pruned], feeds, self.warmup, self.iters)
        return 1000.0 * self.reference * float(np.median(cut) / np.median(full))
