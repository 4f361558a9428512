"""Iterative pruning (`--steps K`): K rounds of prune → (reconstruct) → fine-tune, each round
pruning the output of the one before, distilling from the input model throughout.

The schedule says how much of the input each round leaves (of the MACs with a FLOPs target, else
of the channels with a plain ratio): `geometric` cuts the same share of what remains every round
(kept after round k = final^(k/K)), `cubic` cuts most early and little at the end (kept after round
k = 1 - (1 - final)·(1 - (1 - k/K)³), the gradual schedule of Zhu & Gupta 2017). Each round's
target is set relative to the model it prunes, from the MACs that model really has, so that rounding
in one round is made up by the next. The rounds' plan files compose (`select.compose`) into one plan
relative to the input, so the plan written at the end still describes the input model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

from onnxprune.analysis.analyze import load_and_analyze
from onnxprune.api import PruneResult, run_prune
from onnxprune.config import PruneConfig
from onnxprune.errors import InputError
from onnxprune.select.compose import compose_plans, only_input_tensors

SCHEDULES = ("geometric", "cubic")


def kept_fractions(final: float, steps: int, schedule: str = "geometric") -> list[float]:
    """The share of the input left after each of `steps` rounds, ending at `final`."""
    if schedule == "geometric":
        return [final ** (k / steps) for k in range(1, steps + 1)]
    return [1 - (1 - final) * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


@dataclass
class IterativeOptions:
    """How many rounds, on which schedule, and the fine-tuning after each round (None: none)."""

    steps: int
    schedule: str = "geometric"
    finetune: Callable[[PruneResult, int], PruneResult] | None = None

    def validate(self, config: PruneConfig) -> None:
        """InputError for a schedule that cannot run with `config`."""
        if self.steps < 1:
            raise InputError(f"{{steps}} must be at least 1, got {self.steps}", parameter="steps")
        if self.schedule not in SCHEDULES:
            raise InputError(f"{{schedule}} must be one of {', '.join(SCHEDULES)}", parameter="schedule")
        if config.allocation.kind not in (None, "flops"):
            raise InputError("{steps} works with {ratio} or a fractional {target_flops}", parameter="steps")
        if config.allocation.kind == "flops" and fraction(config.allocation.flops) is None:
            raise InputError("{steps} needs {target_flops} as a fraction (e.g. 0.5)", parameter="steps")


def fraction(target) -> float | None:
    """A target given as a fraction of the input (0 < f <= 1, no unit), else None."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        return None
    return value if 0 < value <= 1 else None


def final_share(config: PruneConfig) -> float:
    """What the whole run leaves of the input: the MACs target, or the channels a ratio keeps."""
    if config.allocation.kind == "flops":
        return fraction(config.allocation.flops) or 1.0
    return 1.0 - config.selection.ratio


def round_config(config: PruneConfig, share: float) -> PruneConfig:
    """`config` for one round that keeps `share` of the model it prunes."""
    result = copy.deepcopy(config)
    if config.allocation.kind == "flops":
        result.allocation.flops = min(share, 1.0)
        result.allocation.resolved = None
    else:
        result.selection.ratio = max(0.0, 1.0 - share)
    return result


def _round_share(config: PruneConfig, goal: float, start_macs: int, macs: int, kept_before: float) -> float:
    """The share of the current model one round keeps to reach `goal` of the input."""
    if config.allocation.kind == "flops":
        return goal * start_macs / macs
    return goal / kept_before


def prune_iteratively(source, config: PruneConfig, options: IterativeOptions, progress=None, log=None) -> PruneResult:
    """Prune `source` in `options.steps` rounds (see the module docstring); the result of the last
    round, with the composed plan and the report's `iterative` entry (one line per round)."""
    options.validate(config)
    config.validate()
    original = load_and_analyze(source).model
    current, result, plan, rounds = source, None, None, []
    first_rows: list[dict] = []
    start_macs = macs = 0
    goals = kept_fractions(final_share(config), options.steps, options.schedule)
    for index, goal in enumerate(goals):
        share = _round_share(config, goal, start_macs, macs, goals[index - 1]) if index else goal
        started = time.perf_counter()
        result = run_prune(current, round_config(config, share), progress)
        if options.finetune is not None:
            result = options.finetune(result, index)
        start_macs, macs = start_macs or result.report["before"]["macs"], result.report["after"]["macs"]
        first_rows = first_rows or result.report["groups"]
        plan = result.plan if plan is None else compose_plans(plan, result.plan)
        rounds.append(_round_entry(index, goal, result, start_macs, time.perf_counter() - started))
        if log:
            log(_round_line(rounds[-1], options.steps))
        current = result.model
    assert result is not None and plan is not None  # steps >= 1
    result.plan = only_input_tensors(plan, original)
    result.report["groups"] = groups_of_input(first_rows, result.report["groups"], plan["groups"])
    _relative_to_input(result.report, start_macs, rounds[0]["params_before"])
    result.report["iterative"] = {"steps": options.steps, "schedule": options.schedule, "rounds": rounds}
    return result


def groups_of_input(first_rows: list[dict], last_rows: list[dict], plan_groups: list[dict]) -> list[dict]:
    """The report's group rows of the input (the first round's: its channels, MACs and
    parameters before), with what all rounds together kept: the composed plan's kept channels
    and the MACs and parameters after the last round (its row sharing a member with the group)."""
    later = {member: row for row in last_rows for member in row["members"]}
    kept = {g["id"]: g.get("kept") for g in plan_groups}
    rows = []
    for row in first_rows:
        entry = dict(row)
        channels = kept.get(row["id"])
        if channels is not None:
            entry["kept"] = len(channels)
        match = next((later[m] for m in row["members"] if m in later), None)
        if match is not None:
            entry.update({k: match[k] for k in ("macs_after", "params_after") if k in match})
        rows.append(entry)
    return rows


def _relative_to_input(report: dict, macs: int, params: int) -> None:
    """The last round's report, its totals counted from the input of the first round."""
    report["before"] = {"macs": macs, "params": params}
    report["macs_ratio"] = report["after"]["macs"] / macs
    report["params_ratio"] = report["after"]["params"] / params


def epochs_per_round(total: int, steps: int) -> list[int]:
    """`total` fine-tuning epochs shared by `steps` rounds, the later rounds taking the remainder
    (a round with 0 epochs is not fine-tuned)."""
    base, extra = divmod(total, steps)
    return [base + (1 if index >= steps - extra else 0) for index in range(steps)]


def _round_entry(index: int, goal: float, result: PruneResult, start_macs: int, seconds: float) -> dict:
    report = result.report
    entry = {
        "round": index + 1,
        "goal": goal,
        "macs": report["after"]["macs"],
        "macs_of_input": report["after"]["macs"] / start_macs,
        "params_before": report["before"]["params"],
        "params": report["after"]["params"],
        "seconds": seconds,
    }
    finetune = report.get("finetune")
    if finetune and finetune.get("history"):
        last = finetune["history"][-1]
        entry.update({k: last[k] for k in ("val_top1", "train_loss") if k in last})
    return entry


def _round_line(entry: dict, steps: int) -> str:
    line = f"round {entry['round']}/{steps}: {entry['macs_of_input']:.1%} of the input's MACs"
    line += f" (goal {entry['goal']:.1%})"
    if "val_top1" in entry:
        line += f", val top-1 {entry['val_top1']:.2%}"
    return line + f", {entry['seconds']:.1f}s"
