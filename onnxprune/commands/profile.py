"""`onnxprune profile MODEL`: the timing tables behind `--round-to auto`, group by group."""

from __future__ import annotations

import argparse
import json

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.errors import InputError

EXAMPLES = """examples:
  onnxprune profile model.onnx --ratio 0.5                 time each group's layers on the CPU
  onnxprune profile model.onnx --ratio 0.3 --ep cuda --batch 32 --json

For every group the plan at --ratio prunes, the group's layers (Conv/Gemm/MatMul producing or
consuming its channels) are timed as single-op models at the requested kept count and at the
multiples of 8 above it up to the next multiple of 32; the chosen count is the smallest one that
no larger count beats by more than the tolerance (3 %). This is what 'onnxprune MODEL --ratio R
--round-to auto' applies. Timings are cached per op signature, provider and device under
$ONNXPRUNE_CACHE (else $XDG_CACHE_HOME/onnxprune, else ~/.cache/onnxprune)."""


@SUBCOMMANDS.register("profile")
class Profile(Command):
    """`onnxprune profile MODEL [--ratio R] [--ep EP]`."""

    help = "time each group's layers at candidate channel counts (--round-to auto)"
    description = (
        "Per prunable group: latency of its layers at candidate kept channel counts on an execution "
        "provider, and the count --round-to auto picks."
    )
    epilog = EXAMPLES
    verbatim = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The model, the plan's ratio, the provider and batch to time on."""
        options.add_model(parser, "input .onnx file")
        parser.add_argument("--ratio", type=float, default=0.5, help="the plan's ratio (default 0.5)")
        options.add_min_channels(parser)
        options.add_timing_options(parser)
        parser.add_argument("--batch", type=int, default=1, help="batch size to time at (default 1)")
        parser.add_argument("--refresh", action="store_true", help="time again, ignoring (and updating) cached timings")
        parser.add_argument("--json", action="store_true", help="print the rounding report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        """Time each pruned group's layers; print the table (or JSON)."""
        from onnxprune.analysis.analyze import load_and_analyze, require_prunable
        from onnxprune.criteria.scoring import score_groups
        from onnxprune.report.console import progress_bar, stdout
        from onnxprune.select.rounding import AutoRoundOptions, auto_round
        from onnxprune.select.selection import SelectOptions, select

        if args.batch < 1 or args.threads < 0:
            raise InputError("--batch must be at least 1 and --threads at least 0")
        selection = SelectOptions(args.ratio, args.min_channels)
        selection.validate()
        analysis = load_and_analyze(args.model)
        require_prunable(analysis)
        scores = score_groups(analysis, "l1")  # the counts do not depend on which channels go
        plan = select(analysis.groups, scores, selection)
        timing = AutoRoundOptions(args.ep, args.batch, args.threads, refresh=args.refresh)
        with progress_bar(f"timing layers on {args.ep}", total=None) as advance:
            _, report = auto_round(analysis, scores, plan, timing, advance)
        if args.json:
            stdout.print_json(json.dumps(report))
        else:
            stdout.print(profile_table(report))
            stdout.print(f"{report['layers_timed']} single-op models timed; timings cached in {report['cache']}")
        return 0


def profile_table(report: dict):
    """One row per pruned group: requested and chosen count and the time at each candidate."""
    from rich.table import Table

    table = Table(
        title=f"Layer timings on {report['provider']} ({report['device']}), batch {report['batch']}; "
        f"chosen: {report['rule']} ({report['tolerance']:.0%})",
        title_justify="left",
    )
    for column in ("group", "first layer", "channels", "requested", "chosen", "layers", "ms at each count"):
        table.add_column(column, justify="left" if column in ("group", "first layer", "ms at each count") else "right")
    for row in report["groups"]:
        times = "  ".join(f"{c}: {ms:.3f}" for c, ms in row["times_ms"].items()) or (row["skipped"] or "aligned")
        chosen = str(row["chosen"]) if row["chosen"] == row["requested"] else f"[bold]{row['chosen']}[/]"
        table.add_row(
            row["id"], row["name"], str(row["channels"]), str(row["requested"]), chosen, str(row["layers"]), times
        )
    return table
