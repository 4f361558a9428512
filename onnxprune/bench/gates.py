"""Latency gates for CI: each candidate at least X times faster than the first model, a median under
MS milliseconds, no slower than a stored baseline by more than a share. Each gate is decided on
the bootstrap confidence interval of its measurement (see `bootstrap`): it passes when the whole
interval clears the bar, fails when the whole interval misses it, and is inconclusive otherwise;
an inconclusive gate's batch size is measured again (the blocks of every round pooled) up to
`max_rounds` times. A gate is settled at the first round its interval is clear of the bar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.bench.bootstrap import Estimate, as_blocks, median_estimate, ratio_estimate
from onnxprune.errors import InputError

SPEEDUP, LATENCY, REGRESSION = "min-speedup", "max-latency", "max-regression"
#: how a gate still inconclusive after the last round is decided
INCONCLUSIVE = ("point", "pass", "fail")


@dataclass
class TimingTable:
    """Timed runs (milliseconds) of models measured side by side: batch -> one flat array per model,
    in blocks of `block` runs, block i of every model timed next to each other; `rounds[batch]`
    counts how many measurements were pooled."""

    models: list[str]
    block: int
    samples: dict[int, list[np.ndarray]]
    rounds: dict[int, int] = field(default_factory=dict)

    def blocks(self, batch: int, model: int) -> np.ndarray:
        """The (blocks, block) array of one model at one batch size."""
        return as_blocks(self.samples[batch][model], self.block)

    def runs(self, batch: int) -> int:
        """Timed runs per model at a batch size, all rounds together."""
        return int(np.asarray(self.samples[batch][0]).size)

    @classmethod
    def from_result(cls, result) -> TimingTable:
        """The table of a `BenchResult` (its `samples`, seconds)."""
        samples = {b: [np.asarray(s, dtype=np.float64) * 1000.0 for s in runs] for b, runs in result.samples.items()}
        return cls([m.path for m in result.models], result.options.block, samples, dict(result.rounds))


@dataclass
class Gate:
    """One bar at one batch size: `model`'s speedup over `reference` (the first model) at least
    `required`; or its median latency at most `required` ms; or its median at most `required` times
    its baseline's, whose runs are `baseline` (ms, blocks of `baseline_block`)."""

    kind: str
    model: int
    batch: int
    required: float
    reference: int = 0
    baseline: np.ndarray | None = None
    baseline_block: int = 1

    @property
    def at_least(self) -> bool:
        """The measurement must reach the bar from above (a speedup), not stay under it."""
        return self.kind == SPEEDUP

    def estimate(self, table: TimingTable, rng: np.random.Generator, resamples: int, confidence: float) -> Estimate:
        """The measured value and its interval."""
        mine = table.blocks(self.batch, self.model)
        if self.kind == SPEEDUP:
            return ratio_estimate(table.blocks(self.batch, self.reference), mine, rng, resamples, confidence)
        if self.kind == LATENCY:
            return median_estimate(mine, rng, resamples, confidence)
        stored = as_blocks(self.baseline if self.baseline is not None else [], self.baseline_block)
        return ratio_estimate(mine, stored, rng, resamples, confidence, paired=False)

    def meets(self, value: float) -> bool:
        """Whether a value clears the bar."""
        return value >= self.required if self.at_least else value <= self.required

    def format(self, value: float) -> str:
        """A value in the gate's unit: 3.52×, 12.30 ms, +4.1 %."""
        if self.kind == SPEEDUP:
            return f"{value:.2f}×"
        if self.kind == LATENCY:
            return f"{value:.3g} ms" if value < 1 else f"{value:.2f} ms"
        return f"{(value - 1) * 100:+.1f} %"

    def what(self) -> str:
        """'speedup', 'median latency', 'slowdown vs baseline'."""
        return {SPEEDUP: "speedup", LATENCY: "median latency", REGRESSION: "slowdown vs baseline"}[self.kind]

    def bar(self) -> str:
        """'≥ 1.50×', '≤ 10.00 ms', '≤ +5.0 %'."""
        return ("≥ " if self.at_least else "≤ ") + self.format(self.required)


@dataclass
class GateSettings:
    """How gates are decided: the interval's confidence, the most rounds of measurement, how a gate
    still inconclusive after them is decided (`point`: by the point estimate; `pass`; `fail`), the
    bootstrap resamples and their seed."""

    confidence: float = 0.95
    max_rounds: int = 3
    inconclusive: str = "point"
    resamples: int = 2000
    seed: int = 0

    def validate(self) -> None:
        """InputError for values outside their range."""
        if not 0.5 <= self.confidence < 1:
            raise InputError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.max_rounds < 1:
            raise InputError(f"--max-rounds must be at least 1, got {self.max_rounds}")
        if self.inconclusive not in INCONCLUSIVE:
            raise InputError(f"--inconclusive must be one of {', '.join(INCONCLUSIVE)}, got {self.inconclusive}")
        if self.resamples < 100:
            raise InputError(f"bootstrap resamples must be at least 100, got {self.resamples}")


@dataclass
class Decision:
    """A gate's outcome: its estimate, `state` from the interval (pass, fail, inconclusive), the
    rounds and timed runs per model it took, and the final `verdict` (pass/fail) with what decided it
    (`interval`, or for an inconclusive gate `point estimate` or `--inconclusive pass|fail`)."""

    gate: Gate
    model: str
    estimate: Estimate
    state: str
    rounds: int
    runs: int
    verdict: str = ""
    decided_by: str = "interval"

    @property
    def passed(self) -> bool:
        """The final verdict is a pass."""
        return self.verdict == "pass"

    def to_dict(self, confidence: float) -> dict:
        """JSON-ready."""
        gate = self.gate
        return {
            "gate": gate.kind,
            "model": self.model,
            "batch": gate.batch,
            "measured": self.estimate.point,
            "required": gate.required,
            "low": self.estimate.low,
            "high": self.estimate.high,
            "confidence": confidence,
            "state": self.state,
            "verdict": self.verdict,
            "decided_by": self.decided_by,
            "rounds": self.rounds,
            "runs": self.runs,
        }


def decide(gate: Gate, table: TimingTable, settings: GateSettings, rng: np.random.Generator) -> Decision:
    """One gate on the runs so far: pass when the whole interval clears the bar, fail when none of it does."""
    estimate = gate.estimate(table, rng, settings.resamples, settings.confidence)
    low_ok, high_ok = gate.meets(estimate.low), gate.meets(estimate.high)
    state = "pass" if low_ok and high_ok else "fail" if not (low_ok or high_ok) else "inconclusive"
    decision = Decision(
        gate, table.models[gate.model], estimate, state, table.rounds.get(gate.batch, 1), table.runs(gate.batch)
    )
    decision.verdict = state if state != "inconclusive" else ""
    return decision


def run_gates(
    gates: list[Gate],
    table: TimingTable,
    remeasure: Callable[[list[int]], TimingTable],
    settings: GateSettings,
) -> tuple[list[Decision], TimingTable]:
    """Decide every gate on `table`; while some are inconclusive and their batch size has had fewer
    than `max_rounds` rounds, `remeasure(batches)` (which returns the pooled table) and decide them
    again. Gates still inconclusive at the end are decided as `settings.inconclusive` says."""
    rng = np.random.default_rng(settings.seed)
    decisions = [decide(gate, table, settings, rng) for gate in gates]
    for _ in range(settings.max_rounds - 1):  # never more, whatever `remeasure` counts
        pending = sorted(
            {d.gate.batch for d in decisions if d.state == "inconclusive" and d.rounds < settings.max_rounds}
        )
        if not pending:
            break
        table = remeasure(pending)
        decisions = [decide(d.gate, table, settings, rng) if d.state == "inconclusive" else d for d in decisions]
    for decision in decisions:
        if decision.state == "inconclusive":
            settle(decision, settings.inconclusive)
    return decisions, table


def settle(decision: Decision, how: str) -> None:
    """Decide an inconclusive gate: by its point estimate (`point`), or `pass`/`fail` outright."""
    if how == "point":
        decision.verdict = "pass" if decision.gate.meets(decision.estimate.point) else "fail"
        decision.decided_by = "point estimate"
    else:
        decision.verdict, decision.decided_by = how, f"--inconclusive {how}"


def speedup_gates(models: int, batches: tuple[int, ...], required: float) -> list[Gate]:
    """Every model after the first against the first, at every batch size."""
    if required <= 0:
        raise InputError(f"--min-speedup must be positive, got {required}")
    if models < 2:
        raise InputError("--min-speedup needs the reference model first and at least one candidate after it")
    return [Gate(SPEEDUP, m, b, required) for b in batches for m in range(1, models)]


def latency_gates(models: int, batches: tuple[int, ...], limits: dict[int | None, float]) -> list[Gate]:
    """The candidates (every model after the first; the only model when one is given) under their
    batch size's limit (`None`: the limit of every batch size not named)."""
    unknown = sorted(b for b in limits if b is not None and b not in batches)
    if unknown:
        raise InputError(f"--max-latency names batch sizes {unknown} that --batch does not time ({list(batches)})")
    candidates = range(1, models) if models > 1 else range(1)
    gates = []
    for batch in batches:
        limit = limits.get(batch, limits.get(None))
        if limit is not None:
            gates += [Gate(LATENCY, m, batch, limit) for m in candidates]
    return gates


def parse_latency(text: str) -> dict[int | None, float]:
    """--max-latency: '12.5' (every batch size) or '1=5,8=30' (per batch size); 'ms' may follow."""
    limits: dict[int | None, float] = {}
    try:
        for item in str(text).split(","):
            if not item.strip():
                continue
            batch, _, value = item.rpartition("=")
            limits[int(batch) if batch.strip() else None] = float(value.strip().lower().removesuffix("ms"))
    except ValueError:
        limits = {}
    if not limits or any(v <= 0 for v in limits.values()) or any(b is not None and b < 1 for b in limits):
        raise InputError(f"--max-latency {text}: expected milliseconds, e.g. 12.5, or per batch size, e.g. 1=5,8=30")
    return limits


def parse_share(text: str, option: str = "--max-regression") -> float:
    """'5%' or '5' (percent) -> 0.05."""
    try:
        value = float(str(text).strip().removesuffix("%")) / 100.0
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        raise InputError(f"{option} {text}: expected a percentage, e.g. 5%")
    return value


def model_name(path: str) -> str:
    """A model's file name, for gate lines and report rows."""
    return Path(path).name
