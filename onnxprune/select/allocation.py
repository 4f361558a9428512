"""Budgets and per-group ratio allocation: hit a FLOPs (MACs), parameter or latency target.

A strategy turns scores and a `Budget` into a `PruningPlan` by choosing one ratio per group.
`PlanCost` prices any plan (MACs and parameters) exactly without rewriting the model: a layer's
MACs scale with the kept share of its weight tensor. Strategies are registered with `@strategy`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from onnxprune.analysis import ChannelGroup
from onnxprune.analysis.cost import model_macs, model_params
from onnxprune.errors import InputError
from onnxprune.model.nodes import node_label
from onnxprune.select.plan import PruningPlan
from onnxprune.select.selection import SelectOptions, select, select_ratios

#: Relative tolerance of a target: the achieved value may sit this far below it, never above.
TOLERANCE = 0.02
UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@dataclass
class Budget:
    """A target for the pruned model: `kind` flops (MACs), params or latency (ms)."""

    kind: str
    target: float
    baseline: float

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"kind": self.kind, "target": self.target, "baseline": self.baseline,
                "fraction": self.target / self.baseline if self.baseline else None}


def parse_budget(kind: str, text: str, baseline: float) -> Budget:
    """'0.5' (a fraction of the original), '2.1G', '500k' (absolute); latency in milliseconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([kKMGT]?)\s*(ms)?\s*", str(text))
    if not match:
        raise InputError(f"--target-{kind}: cannot read '{text}' (e.g. 0.5, 2.1G, 500k, 4.5)")
    value, unit = float(match.group(1)), match.group(2)
    if kind != "latency" and not unit and 1.0 < value < 100.0:
        raise InputError(f"--target-{kind} {text}: a fraction must be in (0, 1]; absolute values take a "
                         "unit (2.1G, 500k) or are whole counts")
    if kind != "latency" and not unit and value <= 1.0:
        value *= baseline
    else:
        value *= UNITS[unit]
    if value <= 0 or (kind != "latency" and value > baseline):
        raise InputError(f"--target-{kind} {text}: must be positive and at most the model's "
                         f"{baseline:.4g}")
    return Budget(kind, value, baseline)


class PlanCost:
    """MACs and parameters of the model a plan would produce, computed from kept shares."""

    def __init__(self, analysis, shapes: dict | None = None):
        self.groups = [g for g in analysis.groups if g.prunable]
        self.macs = model_macs(analysis.view, shapes)  # shapes: at the verification shape (flops.py)
        self.base_params = model_params(analysis.model)
        self.sizes = {name: int(v.size) for name, v in analysis.view.consts.items()}
        self.node_weight = _node_weights(analysis.view)
        self.axes: dict[str, list[tuple[ChannelGroup, object]]] = {}
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
        return {tensor: float(np.prod([masks[g.id][g.channel_of[s]].mean() for g, s in axes]))
                for tensor, axes in self.axes.items()}

    def cost(self, plan: PruningPlan) -> dict[str, float]:
        """{'flops': MACs, 'params': parameters} of the pruned model."""
        share = self.kept_fractions(plan)
        macs = sum(m * share.get(self.node_weight.get(n, ""), 1.0) for n, m in self.macs.items())
        params = self.base_params - sum(self.sizes[t] * (1 - f) for t, f in share.items())
        return {"flops": macs, "params": params}


def _node_weights(view) -> dict[str, str]:
    """The weight tensor whose size a layer's MACs scale with (its first constant input of rank >= 2)."""
    weights = {}
    for node in view.graph.node:
        for name in node.input[1:]:
            value = view.value(name)
            if value is not None and value.ndim >= 2:
                weights[node_label(node)] = name
                break
    return weights


@dataclass
class AllocationContext:
    """Everything a strategy may use."""

    analysis: object
    scores: dict[str, np.ndarray]
    budget: Budget | None
    options: SelectOptions
    cost: PlanCost
    measure: Callable[[PruningPlan], float] | None = None  # the budget's quantity, for latency
    data: object = None
    seed: int = 0
    samples: int = 64
    jobs: int = 1
    layerwise: dict | None = None
    progress: Callable | None = None

    def value(self, plan: PruningPlan) -> float:
        """The budget's quantity for a plan."""
        if self.budget.kind == "latency":
            return self.measure(plan)
        return self.cost.cost(plan)[self.budget.kind]

    def ratios_plan(self, ratios: dict[str, float]) -> PruningPlan:
        """Local selection with one ratio per group."""
        return select_ratios(self.analysis.groups, self.scores, ratios, self.options)


@dataclass
class Allocation:
    """A strategy's result: the plan, the ratio of each group, and what was tried."""

    plan: PruningPlan
    ratios: dict[str, float]
    history: list[dict] = field(default_factory=list)


STRATEGIES: dict[str, Callable[[AllocationContext], Allocation]] = {}


def strategy(name: str):
    """Register an allocation strategy."""

    def register(function):
        STRATEGIES[name] = function
        return function

    return register


def fit(ctx: AllocationContext, plan_at: Callable[[float], PruningPlan], history: list[dict],
        steps: int = 24) -> tuple[float, PruningPlan, float]:
    """Bisect a scale t in [0, 1) (more pruning as t grows) for the smallest t whose plan meets the
    budget (value <= target). Returns (t, its plan, the largest t tried that misses the budget)."""
    low, high = 0.0, 0.999
    best = plan_at(high)
    if ctx.value(best) > ctx.budget.target:
        raise InputError(f"the {ctx.budget.kind} target {ctx.budget.target:.4g} cannot be reached: pruning "
                         f"every group as far as allowed gives {ctx.value(best):.4g}")
    for _ in range(steps):
        middle = (low + high) / 2
        plan = plan_at(middle)
        value = ctx.value(plan)
        history.append({"scale": middle, ctx.budget.kind: value})
        if value <= ctx.budget.target:
            high, best = middle, plan
        else:
            low = middle
        if ctx.budget.target * (1 - TOLERANCE) <= value <= ctx.budget.target:
            break
    return high, best, low


@strategy("uniform")
def uniform(ctx: AllocationContext) -> Allocation:
    """One ratio for every group, the smallest that meets the target."""
    history: list[dict] = []
    groups = [g.id for g in ctx.analysis.groups if g.prunable]
    high, plan, low = fit(ctx, lambda r: ctx.ratios_plan({g: r for g in groups}), history)
    if ctx.value(plan) >= ctx.budget.target * (1 - TOLERANCE):
        return Allocation(plan, {g: high for g in groups}, history)
    mixed = _mix_two_ratios(ctx, groups, low, high, history)
    plan = refill(ctx, mixed.plan, history)  # when one group's step is still wider than the tolerance
    return mixed if plan is mixed.plan else Allocation(plan, achieved_ratios(plan), history)


def _mix_two_ratios(ctx: AllocationContext, groups: list[str], low: float, high: float,
                    history: list[dict]) -> Allocation:
    """Channel counts move in steps, and at one ratio many groups step together: give the larger
    ratio to the first k groups (network order) only, the fewest that meet the budget."""

    def ratios(k: int) -> dict[str, float]:
        return {g: high if i < k else low for i, g in enumerate(groups)}

    lo, hi = 0, len(groups)
    while hi - lo > 1:
        middle = (lo + hi) // 2
        value = ctx.value(ctx.ratios_plan(ratios(middle)))
        history.append({"groups_at_high_ratio": middle, ctx.budget.kind: value})
        lo, hi = (lo, middle) if value <= ctx.budget.target else (middle, hi)
    return Allocation(ctx.ratios_plan(ratios(hi)), ratios(hi), history)


@strategy("global")
def global_threshold(ctx: AllocationContext) -> Allocation:
    """One threshold over normalized scores across all groups (the global ranking of --scope global)."""
    history: list[dict] = []

    def plan_at(ratio: float) -> PruningPlan:
        options = SelectOptions(ratio, ctx.options.min_channels, ctx.options.round_to, "global")
        return select(ctx.analysis.groups, ctx.scores, options)

    _, plan, _ = fit(ctx, plan_at, history)
    plan = refill(ctx, plan, history)
    return Allocation(plan, achieved_ratios(plan), history)


def refill(ctx: AllocationContext, plan: PruningPlan, history: list[dict]) -> PruningPlan:
    """Give back pruned channels, best-scored first, while the budget still holds: closes the gap
    that coarse steps (one channel of a wide coupled group) leave below the target."""
    if ctx.budget.kind == "latency" or ctx.options.round_to > 1:
        return plan
    if ctx.value(plan) >= ctx.budget.target * (1 - TOLERANCE):
        return plan
    candidates = sorted(((float(ctx.scores[g.id][c]), g.id, c) for g in plan.groups if g.id in plan.kept
                         for c in np.setdiff1d(np.arange(g.channels), plan.kept[g.id])), reverse=True)
    kept = {gid: set(map(int, channels)) for gid, channels in plan.kept.items()}
    for _, gid, channel in candidates:
        kept[gid].add(int(channel))
        trial = PruningPlan(plan.groups, {g: np.array(sorted(c)) for g, c in kept.items()})
        value = ctx.value(trial)
        if value <= ctx.budget.target:
            plan = trial
            history.append({"refill": f"{gid}:{channel}", ctx.budget.kind: value})
            if value >= ctx.budget.target * (1 - TOLERANCE):
                break
        else:
            kept[gid].discard(int(channel))
    return plan


@strategy("layerwise")
def layerwise(ctx: AllocationContext) -> Allocation:
    """Exactly the ratios of a JSON/YAML map: group id ('g3') or layer name -> ratio."""
    ratios = resolve_layerwise(ctx.layerwise or {}, ctx.analysis.groups)
    return Allocation(ctx.ratios_plan(ratios), ratios, [])


def resolve_layerwise(mapping: dict, groups: list[ChannelGroup]) -> dict[str, float]:
    """Group ids for the keys of a layerwise map (group ids, or the name of a layer in the group)."""
    ratios = {}
    for key, ratio in mapping.items():
        # a layer name means the group of the layer's output channels (a Conv also reads the group
        # before it, and a first layer's name is also the name of the frozen input group)
        matches = ([g for g in groups if key == g.id]
                   or [g for g in groups if key in {m.node for m in g.members_with("out")}]
                   or [g for g in groups if key == g.name or key in {m.node for m in g.members}])
        if not matches:
            raise InputError(f"layerwise: '{key}' names no group or layer (see 'onnxprune analyze')")
        for group in matches:
            if group.frozen:
                raise InputError(f"layerwise: '{key}' is in frozen group {group.id} ({group.frozen})")
            if not 0 <= float(ratio) < 1:
                raise InputError(f"layerwise: ratio of '{key}' must be in [0, 1), got {ratio}")
            ratios[group.id] = float(ratio)
    return ratios


def load_layerwise(path: str | Path) -> dict:
    """Read a layerwise map from JSON or YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"--layerwise {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            mapping = yaml.safe_load(text)
        else:
            mapping = json.loads(text)
    except ImportError:
        raise InputError("--layerwise: YAML needs PyYAML (pip install pyyaml); JSON works without") from None
    except Exception as exc:
        raise InputError(f"--layerwise {path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({exc})") from None
    if not isinstance(mapping, dict):
        raise InputError(f"--layerwise {path}: expected a map of group or layer name to ratio")
    return mapping


@dataclass
class AllocationRequest:
    """What the user asked for: at most one target, a strategy, its options."""

    flops: object = None
    params: object = None
    latency: object = None
    strategy: str | None = None
    layerwise: dict | str | None = None
    samples: int = 64
    jobs: int = 1
    resolved: Budget | None = None

    @property
    def kind(self) -> str | None:
        """The target's kind, or None."""
        given = [k for k in ("flops", "params", "latency") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InputError("give one target: --target-flops, --target-params or --target-latency")
        return given[0] if given else None

    @property
    def active(self) -> bool:
        """True when a target or a layerwise map replaces the plain ratio."""
        if self.kind or self.layerwise is not None:
            self.strategy = self.strategy or ("layerwise" if self.kind is None else "uniform")
            return True
        if self.strategy:
            raise InputError(f"--allocate {self.strategy} needs a target (--target-flops, --target-params, "
                             "--target-latency) or, for layerwise, --layerwise FILE")
        return False

    def budget(self, cost: PlanCost, analysis) -> Budget | None:
        """The target as an absolute Budget."""
        kind = self.kind
        if kind is None:
            return None
        full = PruningPlan(analysis.groups, {})
        baseline = self.latency_meter(analysis)(full) if kind == "latency" else cost.cost(full)[kind]
        self.resolved = parse_budget(kind, str(getattr(self, kind)), baseline)
        return self.resolved

    def latency_meter(self, analysis) -> Callable[[PruningPlan], float] | None:
        """Median ONNX Runtime CPU latency (ms, batch 1) of the model a plan produces."""
        if self.kind != "latency":
            return None
        from onnxprune.bench import measure_latency
        from onnxprune.model.inputs import random_inputs
        from onnxprune.passes import apply_plan

        shapes = getattr(analysis, "shapes", None)  # the verification shapes, batch 1
        feeds = random_inputs(analysis.model, batch=1, shapes=shapes.shapes if shapes else None)

        def measure(plan: PruningPlan) -> float:
            model = apply_plan(analysis.model, plan, analysis.view).model
            return measure_latency(model, feeds, warmup=3, iters=20).median_ms

        return measure

    def layerwise_map(self) -> dict | None:
        """The layerwise map (read from its file when a path was given)."""
        if self.layerwise is None or isinstance(self.layerwise, dict):
            return self.layerwise
        return load_layerwise(self.layerwise)


def achieved_ratios(plan: PruningPlan) -> dict[str, float]:
    """The share of channels each prunable group loses in a plan."""
    return {g.id: 1 - plan.kept_count(g) / g.channels for g in plan.groups if g.prunable}


def allocate(ctx: AllocationContext, name: str) -> Allocation:
    """Run the named strategy."""
    if name not in STRATEGIES:
        raise InputError(f"unknown --allocate '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    if name != "layerwise" and ctx.budget is None:
        raise InputError(f"--allocate {name} needs a target: --target-flops, --target-params or --target-latency")
    return STRATEGIES[name](ctx)


import onnxprune.select.search as search  # noqa: E402,F401  (registers the data-driven strategies: sensitivity, random-search)
