"""`onnxprune bench` with gates: measure, decide every gate on its confidence interval, re-measure
the batch sizes whose gates are inconclusive (see `gates.run_gates`), compare with a baseline."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from onnxprune.bench.baseline import check_compatible, load_baseline, regression_gates
from onnxprune.bench.gates import Decision, Gate, GateSettings, TimingTable, latency_gates, run_gates, speedup_gates
from onnxprune.bench.suite import Bench, BenchOptions, BenchResult
from onnxprune.errors import InputError

#: timed blocks per round a gate needs to see the noise (--iters / --block)
MIN_BLOCKS = 3


@dataclass
class GateRequest:
    """The gates asked for: --min-speedup, --max-latency (batch -> ms, None for every batch size),
    --baseline with --max-regression (a share, 0.05 for 5 %; default 5 %) and --force, and how to
    decide (`settings`)."""

    min_speedup: float | None = None
    max_latency: dict[int | None, float] = field(default_factory=dict)
    baseline: str | os.PathLike | None = None
    max_regression: float | None = None
    force: bool = False
    settings: GateSettings = field(default_factory=GateSettings)

    def any(self) -> bool:
        """Whether any gate is asked for."""
        return self.min_speedup is not None or bool(self.max_latency) or self.baseline is not None


@dataclass
class GatedRun:
    """The measurement (every round pooled), each gate's decision and notes (baseline matching)."""

    result: BenchResult
    decisions: list[Decision]
    notes: list[str]
    settings: GateSettings

    @property
    def failed(self) -> list[Decision]:
        """The gates whose final verdict is a fail."""
        return [d for d in self.decisions if not d.passed]

    def to_dict(self) -> dict:
        """The --json document: the measurement, `gates` and `notes`."""
        doc = self.result.to_dict()
        doc["gates"] = [d.to_dict(self.settings.confidence) for d in self.decisions]
        doc["notes"] = list(self.notes)
        return doc


def gated_bench(
    paths: list[str | os.PathLike],
    options: BenchOptions,
    request: GateRequest,
    progress: Callable[[], object] | None = None,
) -> GatedRun:
    """Time the models and decide the gates (InputError for bad gates or an incomparable baseline,
    before anything is timed)."""
    request.settings.validate()
    if request.max_regression is not None and request.baseline is None:
        raise InputError("--max-regression needs --baseline FILE")
    if request.any() and options.blocks() < MIN_BLOCKS:
        raise InputError(
            f"gates need at least {MIN_BLOCKS} timed blocks per round to see the noise; --iters {options.iters} "
            f"--block {options.block} gives {options.blocks()}"
        )
    bench = Bench(paths, options)
    gates, notes = planned_gates(bench, request)
    result = bench.measure(progress=progress)
    if not gates:
        return GatedRun(result, [], notes, request.settings)
    decisions, _ = run_gates(
        gates,
        TimingTable.from_result(result),
        lambda batches: TimingTable.from_result(bench.measure(batches, progress)),
        request.settings,
    )
    return GatedRun(bench.result(), decisions, notes, request.settings)


def planned_gates(bench: Bench, request: GateRequest) -> tuple[list[Gate], list[str]]:
    """Every gate of the request on the loaded models; notes from the baseline."""
    count, batches = len(bench.models), bench.options.batches
    gates: list[Gate] = []
    if request.min_speedup is not None:
        gates += speedup_gates(count, batches, request.min_speedup)
    if request.max_latency:
        gates += latency_gates(count, batches, request.max_latency)
    notes: list[str] = []
    if request.baseline is not None:
        baseline = load_baseline(request.baseline)
        notes += check_compatible(baseline, bench.result().to_dict(), request.force)
        allowed = 0.05 if request.max_regression is None else request.max_regression
        more, matching = regression_gates(baseline, bench.result(), allowed)
        gates += more
        notes += matching
    return gates, notes
