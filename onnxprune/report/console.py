"""Terminal rendering of analyses and reports (rich tables)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.table import Table

from onnxprune.analysis import RULES

#: Wide enough for one-line reasons when the output is a file or a pipe.
_WIDTH = None if sys.stdout.isatty() else 200
stdout = Console(highlight=False, width=_WIDTH)


def human(count: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.3g}{unit}"
    return f"{count:.3g}"


def groups_table(rows: list[dict], title: str, show_kept: bool) -> Table:
    """One row per channel group (with MACs and parameters before → after when pruned)."""
    table = Table(title=title, title_justify="left")
    columns = ["id", "first layer", "channels", "members", "MACs share"]
    columns += ["MACs", "params"] if show_kept else []
    for column in columns + ["status"]:
        table.add_column(column, justify="left" if column in ("id", "first layer") else "right")
    table.columns[-1].justify = "left"
    for row in rows:
        pruned = show_kept and row["frozen"] is None
        cells = [
            row["id"],
            row["name"],
            f"{row['channels']} → {row['kept']}" if pruned else str(row["channels"]),
            str(len(row["members"])),
            f"{row['macs_share']:.1%}",
        ]
        if show_kept:
            cells += [_before_after(row, "macs"), _before_after(row, "params")]
        status = "prunable" if row["frozen"] is None else f"[yellow]frozen[/]: {row['frozen']}"
        table.add_row(*cells, status)
    return table


def _before_after(row: dict, key: str) -> str:
    after = row.get(f"{key}_after")
    if after is None or after == row[key]:
        return human(row[key])
    return f"{human(row[key])} → {human(after)}"


def print_analysis(rows: list[dict], prunable_share: float, model_name: str) -> None:
    """The `analyze` table and a summary line."""
    stdout.print(groups_table(rows, f"Channel groups of {model_name}", show_kept=False))
    frozen = sum(1 for r in rows if r["frozen"])
    stdout.print(
        f"{len(rows)} groups: {len(rows) - frozen} prunable, {frozen} frozen; "
        f"{prunable_share:.1%} of the MACs are in layers with prunable channels"
    )


def print_report(report: dict, output: str, plan_path: str) -> None:
    """The pruning report: groups, totals and the verification result."""
    stdout.print(groups_table(report["groups"], f"Pruned with {report['criterion']}", show_kept=True))
    for line in (*_totals_lines(report), *_plan_lines(report), *_recovery_lines(report), *_verification_lines(report)):
        stdout.print(line)
    stdout.print(f"wrote {output} and {plan_path}")


def _totals_lines(report: dict) -> list[str]:
    """MACs and parameters before → after."""
    before, after = report["before"], report["after"]
    at = ", ".join(f"{name}={'x'.join(map(str, s['macs_shape']))}" for name, s in (report.get("shapes") or {}).items())
    return [
        f"MACs    {human(before['macs'])} → {human(after['macs'])}  ({report['macs_ratio']:.1%} kept)"
        + (f" at {at}" if at else ""),
        f"params  {human(before['params'])} → {human(after['params'])}  ({report['params_ratio']:.1%} kept)",
        *_io_shape_lines(report),
        *_perplexity_lines(report),
    ]


def _perplexity_lines(report: dict) -> list[str]:
    """A language model's perplexity before → after on the held-out tokens (`--eval-tokens`)."""
    ppl = report.get("perplexity")
    if not ppl:
        return []
    return [
        f"perplexity {ppl['before']:.2f} → {ppl['after']:.2f}  (×{ppl['ratio']:.4f}) on {ppl['tokens']} "
        f"held-out tokens of {ppl['source']}"
        + (" (after reconstruction)" if (report.get("reconstruction") or {}).get("applied") else "")
    ]


def _io_shape_lines(report: dict) -> list[str]:
    """The graph inputs/outputs whose declared shape changed (a KV cache's heads)."""
    changed = report.get("io_shapes") or {}
    if not changed:
        return []
    names = list(changed)
    shown = ", ".join(
        f"{name}[{axis}] {sizes['from']} → {sizes['to']}" for name in names[:4] for axis, sizes in changed[name].items()
    )
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return [f"[yellow]KV cache[/] inputs/outputs declare the kept heads: {shown}{more}"]


def _plan_lines(report: dict) -> list[str]:
    """The allocation's target and what was achieved, and what `--round-to auto` changed."""
    lines = []
    allocation = report.get("allocation")
    if allocation and allocation.get("target"):
        target = allocation["target"]
        unit = " ms" if target["kind"] == "latency" else ""
        lines.append(
            f"target  {target['kind']} {human(target['target'])}{unit} → achieved "
            f"{human(target['achieved'])}{unit} ({allocation['strategy']} allocation)"
        )
    elif allocation:
        lines.append(f"ratios from the {allocation['strategy']} map: {len(allocation['ratios'])} groups")
    rounding = report.get("rounding")
    if rounding:
        changed = [g for g in rounding["groups"] if g["chosen"] != g["requested"]]
        detail = ", ".join(f"{g['id']} {g['requested']} → {g['chosen']}" for g in changed[:8])
        lines.append(
            f"round-to auto ({rounding['provider']}, batch {rounding['batch']}): {len(changed)} of "
            f"{len(rounding['groups'])} groups keep more channels because it is faster"
            f"{': ' + detail if detail else ''}{' …' if len(changed) > 8 else ''}"
        )
    return lines


def ridge_lines(recon: dict) -> list[str]:
    """The λ reconstruction chose per layer and the layers it kept as pruned (one line)."""
    layers = recon.get("per_layer") or []
    if not layers:
        return []
    ridges = sorted(c["ridge"] for c in layers)
    kept = [c["node"] for c in layers if not c["accepted"]]
    how = "chosen per layer by held-out error" if recon.get("ridge_selection") == "held-out" else "fixed"
    chosen = f"λ {ridges[0]:g}" if ridges[0] == ridges[-1] else f"λ {ridges[0]:g}…{ridges[-1]:g}"
    chosen += f" (median {ridges[len(ridges) // 2]:g})" if ridges[0] != ridges[-1] else ""
    residual = sum(c.get("target") == "residual sum" for c in layers)
    text = f"  ridge {how}: {chosen}; {residual} of {len(layers)} layers fitted to their residual sum"
    if kept:
        text += f"; {len(kept)} kept as pruned (refit did not lower their held-out error): {', '.join(kept[:4])}"
        text += " …" if len(kept) > 4 else ""
    return [text]


def _recovery_lines(report: dict) -> list[str]:
    """Reconstruction, fine-tuning and the latency measured after fine-tuning."""
    lines = []
    recon = report.get("reconstruction")
    if recon:
        state = "applied" if recon.get("applied") else "not applied (it did not lower the error)"
        lines.append(
            f"reconstruction: {recon.get('layers', 0)} layers refitted by least squares, {state}; "
            f"held-out output error {recon['output_error_before']:.3g} → {recon['output_error_after']:.3g}"
        )
        lines += ridge_lines(recon)
    lines += allocation_tip(report)
    lines += _distillation_lines(report)
    tuned = report.get("finetune")
    if tuned and tuned["history"]:
        last, first = tuned["history"][-1], tuned.get("before") or {}
        val = (
            f"; val top-1 {first.get('val_top1', float('nan')):.1%} → {last.get('val_top1', float('nan')):.1%}"
            if "val_top1" in last
            else ""
        )
        kept = "" if tuned.get("applied", True) else " — not kept: validation top-1 dropped"
        lines.append(
            f"fine-tuned {tuned['epochs']} epochs{' with distillation' if tuned['teacher'] else ''}{val}{kept}"
        )
    latency = report.get("latency")
    if latency:
        lines.append(
            f"latency (ONNX Runtime CPU, batch 1): {latency['before_ms']:.3f} ms → {latency['after_ms']:.3f} ms "
            f"({latency['speedup']:.2f}×)"
        )
    return lines


def allocation_tip(report: dict) -> list[str]:
    """A hint when a FLOPs/parameter target was spread uniformly and then recovered from
    calibration images: the sensitivity allocation uses those images to choose the architecture."""
    allocation = report.get("allocation") or {}
    target = allocation.get("target") or {}
    recovered = report.get("reconstruction") or report.get("distillation")
    if not recovered or allocation.get("strategy") != "uniform" or target.get("kind") not in ("flops", "params"):
        return []
    return [
        "  tip: --allocate sensitivity chooses each group's ratio from these calibration images "
        "(ResNet-56 at 50 % FLOPs, reconstructed: 87.3 % top-1 instead of 78.8 % with uniform)"
    ]


def _distillation_lines(report: dict) -> list[str]:
    """`--recover kd`: steps, time, held-out error and agreement before and after, which checkpoint was kept."""
    kd = report.get("distillation")
    if not kd:
        return []
    before, after = kd["before"], kd["after"]
    kept = f"kept step {kd['kept_step']}" if kd["applied"] else "[yellow]not applied[/]: " + kd["stopped"]
    return [
        f"distillation (kd, no labels): {kd['steps']} steps in {kd['seconds']:.0f} s on {kd['train_samples']} "
        f"images; held-out output error vs the input model {before['error']:.3g} → {after['error']:.3g} "
        f"(agreement {before['agreement']:.1%} → {after['agreement']:.1%}, {kd['held_out_samples']} images); {kept}"
    ]


def _verification_lines(report: dict) -> list[str]:
    """Where the model was verified and how close it is, and the groups frozen because they failed."""
    check = report.get("verification")
    if not check:
        return ["[yellow]not verified (--no-verify)[/]"]
    when = " (checked before reconstruction changed the weights)" if report.get("reconstruction") else ""
    shapes = ", ".join(
        f"{name}={'x'.join(map(str, s['shape']))} ({s['source']})" for name, s in (check.get("shapes") or {}).items()
    )
    lines = [
        f"verified at {shapes}: matches the masked reference (max relative difference "
        f"{check['max_relative']:.2g}, float noise {check['noise']:.2g} ({check['noise_method']}), "
        f"tolerance {check['tolerance']:.2g}){when}"
    ]
    lines += [
        f"[yellow]frozen[/] {failed['id']}: {failed['reason']} — the other groups are pruned"
        for failed in check.get("failed_groups") or ()
    ]
    return lines


def print_rules() -> None:
    """The op-coverage table generated from the rule registry."""
    table = Table(title="Ops with a channel rule (anything else freezes the channels it touches)", title_justify="left")
    for column in ("op", "opsets", "how channels map", "freezes when"):
        table.add_column(column)
    for op in sorted(RULES):
        rule = RULES[op]
        table.add_row(op, rule.opsets, rule.mapping, rule.freezes_when)
    stdout.print(table)


class ProgressAdvance:
    """What `progress_bar` yields: call it (`advance(steps=1)`) to advance the current bar;
    `stage(description, total)` shows a bar of its own for one part of the work (e.g. one
    random-search candidate), `stage(None)` goes back to the first bar."""

    def __init__(self, progress, description: str, total: int | None):
        self._progress = progress
        self._first = self._task = progress.add_task(description, total=total)

    def __call__(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)

    def stage(self, description: str | None, total: int | None = None) -> None:
        """Replace the current stage's bar by one for `description` (None: the first bar)."""
        if self._task != self._first:
            self._progress.remove_task(self._task)
        self._task = self._first if description is None else self._progress.add_task(description, total=total)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None):
    """A progress bar on stderr (shown only on a terminal); yields a `ProgressAdvance`, to call
    per step."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        yield ProgressAdvance(progress, description, total)
