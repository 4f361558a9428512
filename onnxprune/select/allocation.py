"""Per-group ratio allocation: what a strategy gets (`AllocationContext`) and returns (`Allocation`),
the strategy registry, the helpers strategies share (`fit`, `refill`) and the user's request.

A strategy turns scores and a `Budget` (select/budgets.py) into a `PruningPlan` by choosing one
ratio per group. Strategies live in select/strategies/, one module each, registered with
`@STRATEGIES.register(name)`; the registry imports them (onnxprune/registry.py `BUILTINS`) the
first time it is read.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.analysis.analyze import Analysis
from onnxprune.errors import InputError
from onnxprune.registry import Registry
from onnxprune.select.budgets import (
    TOLERANCE,
    Budget,
    LatencyMeter,
    PlanCost,
    parse_budget,
)
from onnxprune.select.plan import PruningPlan
from onnxprune.select.search_eval import CandidateScore, SearchEval, parse_search_eval
from onnxprune.select.selection import SelectOptions, select_ratios

#: default of `--allocate-samples`: on the shared ResNet-56 at 50 % FLOPs, the sensitivity study on
#: 64, 128 and 500 images led to 87.4 %, 88.1 % and 87.3 % top-1 after reconstruction (103, 142, 394 s)
STUDY_SAMPLES = 128


@dataclass
class AllocationContext:
    """Everything a strategy may use."""

    analysis: Analysis
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
    #: how random-search ranks candidates (select/search_eval.py), and, for the modes that recover
    #: each candidate first, the recovery that scores one (built by recover/candidates.py)
    search: SearchEval = field(default_factory=SearchEval)
    evaluate: Callable[[PruningPlan], CandidateScore] | None = None
    #: the data-driven strategies measure on the first this many calibration samples (0: all)
    study_samples: int = 0

    @property
    def target(self) -> Budget:
        """The budget, for the strategies that spend one (all but layerwise: `allocate` refuses
        them without a target)."""
        if self.budget is None:
            raise ValueError("this allocation strategy needs a budget")
        return self.budget

    def value(self, plan: PruningPlan) -> float:
        """The budget's quantity for a plan."""
        if self.target.kind == "latency":
            if self.measure is None:
                raise ValueError("a latency budget needs a latency meter")
            return self.measure(plan)
        return self.cost.cost(plan)[self.target.kind]

    def ratios_plan(self, ratios: dict[str, float]) -> PruningPlan:
        """Local selection with one ratio per group."""
        return select_ratios(self.analysis.groups, self.scores, ratios, self.options)

    def prunable_groups(self) -> list:
        """The prunable groups, in network order."""
        return [g for g in self.analysis.groups if g.prunable]

    def kept(self, group, ratio: float) -> np.ndarray:
        """The channels `group` keeps at `ratio` (local selection with the run's options)."""
        plan = self.ratios_plan({group.id: ratio})
        return plan.kept.get(group.id, np.arange(group.channels))

    def require_data(self, name: str):
        """The calibration data that strategy `name` measures on; InputError without them or with
        --jobs < 1."""
        if self.data is None:
            raise InputError(
                f"{{allocate}} {name} measures pruned models on calibration data: add {{calib}} PATH "
                "(.npz/.npy or an image folder)",
                parameter="allocate",
            )
        if self.jobs < 1:
            raise InputError(f"{{jobs}} must be at least 1, got {self.jobs}", parameter="jobs")
        samples = getattr(self.data, "samples", 0)
        if 0 < self.study_samples < samples:
            return dataclasses.replace(self.data, samples=self.study_samples)  # type: ignore[type-var]  # the first ones (files are shuffled)
        return self.data


@dataclass
class Allocation:
    """A strategy's result: the plan, the ratio of each group, and what was tried."""

    plan: PruningPlan
    ratios: dict[str, float]
    history: list[dict] = field(default_factory=list)


#: The allocation strategies by name (`--allocate NAME`); built-ins in select/strategies/.
STRATEGIES: Registry[Callable[[AllocationContext], Allocation]] = Registry("allocation strategy", parameter="allocate")


def allocate(ctx: AllocationContext, name: str) -> Allocation:
    """Run the named strategy."""
    run = STRATEGIES.get_or_fail(name)
    if name != "layerwise" and ctx.budget is None:
        raise InputError(
            f"{{allocate}} {name} needs a target: {{target_flops}}, {{target_params}} or {{target_latency}}",
            parameter="allocate",
        )
    return run(ctx)


def fit(
    ctx: AllocationContext, plan_at: Callable[[float], PruningPlan], history: list[dict], steps: int = 24
) -> tuple[float, PruningPlan, float]:
    """Bisect a scale t in [0, 1) (more pruning as t grows) for the smallest t whose plan meets the
    budget (value <= target). Returns (t, its plan, the largest t tried that misses the budget)."""
    low, high = 0.0, 0.999
    best = plan_at(high)
    if ctx.value(best) > ctx.target.target:
        raise InputError(
            f"the {ctx.target.kind} target {ctx.target.target:.4g} cannot be reached: pruning "
            f"every group as far as allowed gives {ctx.value(best):.4g}"
        )
    for _ in range(steps):
        middle = (low + high) / 2
        plan = plan_at(middle)
        value = ctx.value(plan)
        history.append({"scale": middle, ctx.target.kind: value})
        if value <= ctx.target.target:
            high, best = middle, plan
        else:
            low = middle
        if ctx.target.target * (1 - TOLERANCE) <= value <= ctx.target.target:
            break
    return high, best, low


def refill(ctx: AllocationContext, plan: PruningPlan, history: list[dict]) -> PruningPlan:
    """Give back pruned channels, best-scored first, while the budget still holds: closes the gap
    that coarse steps (one channel of a wide coupled group) leave below the target."""
    if ctx.target.kind == "latency" or ctx.options.round_to > 1:
        return plan
    if ctx.value(plan) >= ctx.target.target * (1 - TOLERANCE):
        return plan
    candidates = sorted(
        (
            (float(ctx.scores[g.id][c]), g.id, c)
            for g in plan.groups
            if g.id in plan.kept
            for c in np.setdiff1d(np.arange(g.channels), plan.kept[g.id])
        ),
        reverse=True,
    )
    kept = {gid: set(map(int, channels)) for gid, channels in plan.kept.items()}
    for _, gid, channel in candidates:
        kept[gid].add(int(channel))
        trial = PruningPlan(plan.groups, {g: np.array(sorted(c)) for g, c in kept.items()})
        value = ctx.value(trial)
        if value <= ctx.target.target:
            plan = trial
            history.append({"refill": f"{gid}:{channel}", ctx.target.kind: value})
            if value >= ctx.target.target * (1 - TOLERANCE):
                break
        else:
            kept[gid].discard(int(channel))
    return plan


def achieved_ratios(plan: PruningPlan) -> dict[str, float]:
    """The share of channels each prunable group loses in a plan."""
    return {g.id: 1 - plan.kept_count(g) / g.channels for g in plan.groups if g.prunable}


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
    #: random-search's ranking: None (raw), 'raw', 'reconstruct' or 'kd-steps:N'
    search_eval: str | None = None
    #: calibration samples the sensitivity and random-search measurements use (0: all)
    study_samples: int = STUDY_SAMPLES
    resolved: Budget | None = None
    meter: LatencyMeter | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str | None:
        """The target's kind, or None."""
        given = [k for k in ("flops", "params", "latency") if getattr(self, k) is not None]
        if len(given) > 1:
            raise InputError(
                "give one target: {target_flops}, {target_params} or {target_latency}", parameter="target_flops"
            )
        return given[0] if given else None

    @property
    def active(self) -> bool:
        """True when a target or a layerwise map replaces the plain ratio."""
        if self.kind or self.layerwise is not None:
            self.strategy = self.strategy or ("layerwise" if self.kind is None else "uniform")
            return True
        if self.strategy:
            raise InputError(
                f"{{allocate}} {self.strategy} needs a target ({{target_flops}}, {{target_params}}, "
                "{target_latency}) or, for layerwise, {layerwise} FILE",
                parameter="allocate",
            )
        return False

    @property
    def search(self) -> SearchEval:
        """The parsed `search_eval` (raw when not given)."""
        return parse_search_eval(self.search_eval)

    def validate_search(self, calibrated: bool) -> None:
        """InputError for a bad `search_eval`, one without random-search, or without calibration
        data (`calibrated`: whether a calibration source was given), or a negative `study_samples`."""
        if not isinstance(self.study_samples, int) or self.study_samples < 0:
            raise InputError(
                f"{{allocate_samples}} must be a whole number ≥ 0 (0: all), got {self.study_samples}",
                parameter="allocate_samples",
            )
        if self.search_eval is None:
            return
        search = self.search
        if not self.active or self.strategy != "random-search":
            raise InputError(
                "{search_eval} ranks the candidates of a random search: add {allocate} random-search "
                "and a target (e.g. {target_flops} 0.5)",
                parameter="search_eval",
            )
        if not calibrated:
            raise InputError(
                f"{{search_eval}} {search.name} measures candidates on calibration data: add {{calib}} PATH "
                "(.npz/.npy or an image folder)",
                parameter="search_eval",
            )
        if search.mode == "kd" and importlib.util.find_spec("torch") is None:
            raise InputError(
                f"{{search_eval}} {search.name} distills with torch: install the torch extra "
                "(pip install 'onnxprune[torch]')",
                parameter="search_eval",
            )

    def budget(self, cost: PlanCost, analysis: Analysis) -> Budget | None:
        """The target as an absolute Budget."""
        kind = self.kind
        if kind is None:
            return None
        full = PruningPlan(analysis.groups, {})
        baseline = self.shared_meter(analysis)(full) if kind == "latency" else cost.cost(full)[kind]
        self.resolved = parse_budget(kind, str(getattr(self, kind)), baseline)
        return self.resolved

    def latency_meter(self, analysis: Analysis) -> Callable[[PruningPlan], float] | None:
        """Median ONNX Runtime CPU latency (ms, batch 1) of the model a plan produces (latency
        targets only, else None)."""
        return self.shared_meter(analysis) if self.kind == "latency" else None

    def shared_meter(self, analysis: Analysis) -> LatencyMeter:
        """One LatencyMeter per analysis: the target and the strategy share its reference."""
        if self.meter is None or self.meter.analysis is not analysis:
            self.meter = LatencyMeter(analysis)
        return self.meter

    def layerwise_map(self) -> dict | None:
        """The layerwise map (read from its file when a path was given)."""
        if self.layerwise is None or isinstance(self.layerwise, dict):
            return self.layerwise
        return load_layerwise(self.layerwise)


def load_layerwise(path: str | Path) -> dict:
    """Read a layerwise map from JSON or YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{{layerwise}} {path}: {exc.strerror}", parameter="layerwise") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional dependency, only for YAML maps

            mapping = yaml.safe_load(text)
        else:
            mapping = json.loads(text)
    except ImportError:
        raise InputError(
            "{layerwise}: YAML needs PyYAML (pip install pyyaml); JSON works without", parameter="layerwise"
        ) from None
    except Exception as exc:
        raise InputError(
            f"{{layerwise}} {path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({exc})", parameter="layerwise"
        ) from None
    if not isinstance(mapping, dict):
        raise InputError(f"{{layerwise}} {path}: expected a map of group or layer name to ratio", parameter="layerwise")
    return mapping
