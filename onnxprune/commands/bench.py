"""`onnxprune bench A.onnx [B.onnx ...]`: latency and throughput side by side on ONNX Runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command

EXAMPLES = """examples:
  onnxprune bench model.onnx model.pruned.onnx --batch 1,8,64
  onnxprune bench model.onnx small.onnx --ep cuda --batch 1,32 --iters 200
  onnxprune bench model.onnx --shape images=1x3x640x640 --json > bench.json
  onnxprune bench model.onnx model.pruned.onnx --batch 1,8 --min-speedup 1.5 --junit gates.xml
  onnxprune bench model.pruned.onnx --max-latency 1=5,8=30 --baseline last.json --max-regression 5%

The first model is the reference: every row gives the speedup over it at that batch size
(median latency / median latency) and its MACs reduction (its MACs / this model's MACs, batch 1).
Models are timed side by side, in interleaved blocks of --block runs (A B B A ...), so that other
load on the machine hits all of them alike.

gates: --min-speedup (every model after the first against the first), --max-latency (the models
after the first, or the only one) and --baseline/--max-regression (every model found in the
baseline, by file name, else by content) are checked at every --batch. Each is decided on a
bootstrap confidence interval over the timed blocks: pass when the whole interval clears the bar,
fail when none of it does; inconclusive gates have their batch size timed again (rounds pooled)
up to --max-rounds, then are decided as --inconclusive says (default: by the point estimate).

exit codes: 0 every gate holds (or none asked), 1 a gate failed (one line per failing gate on
            stderr), 2 bad input or a baseline measured elsewhere (one line, nothing timed)"""


@SUBCOMMANDS.register("bench")
class Bench(Command):
    """`onnxprune bench A.onnx [B.onnx ...]`."""

    help = "time models side by side on ONNX Runtime (CPU, CUDA, TensorRT)"
    description = (
        "Median, p90 and p99 latency and throughput of each model at each batch size, with the "
        "speedup of each model over the first and its MACs reduction."
    )
    epilog = EXAMPLES
    verbatim = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The models, the provider, batch sizes, runs, shapes, IO binding, output format."""
        parser.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files; the first is the reference")
        options.add_timing_options(parser)
        parser.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
        parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model and batch (default 10)")
        parser.add_argument("--iters", type=int, default=100, help="timed runs per model and batch (default 100)")
        parser.add_argument("--block", type=int, default=10, help="consecutive timed runs of one model (default 10)")
        options.add_shape(
            parser,
            "dims of an input's dynamic axes, e.g. images=1x3x224x224 (the first dim is "
            "replaced by each --batch; repeatable)",
        )
        parser.add_argument(
            "--io-binding",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="bind inputs/outputs on the device so transfers are not timed (default: on for "
            "cuda/tensorrt, off for cpu)",
        )
        parser.add_argument(
            "--no-spin",
            action="store_true",
            help="idle ONNX Runtime workers sleep instead of spin-waiting (steadier on a busy machine)",
        )
        options.add_seed(parser, "seed of the random inputs")
        parser.add_argument("--json", action="store_true", help="print the results as JSON (onnxprune-bench/1)")
        add_gate_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Time the models, decide the gates; print a table (or JSON), write the reports."""
        from onnxprune.bench.gating import gated_bench
        from onnxprune.bench.suite import BenchOptions, parse_batches
        from onnxprune.report.console import progress_bar

        timing = BenchOptions(
            args.ep,
            parse_batches(args.batch),
            args.threads,
            args.warmup,
            args.iters,
            args.block,
            args.io_binding,
            options.input_shapes(args.shape),
            args.seed,
            not args.no_spin,
        )
        timing.validate()
        request = gate_request(args)
        total = len(args.models) * len(timing.batches) * timing.blocks()
        with progress_bar(f"timing on {args.ep}", total=total) as advance:
            run = gated_bench(args.models, timing, request, advance)
        write_outputs(run, args)
        return 1 if run.failed else 0


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """--min-speedup, --max-latency, the baseline options, how gates are decided, the reports."""
    gates = parser.add_argument_group("gates (exit 1 when one fails)")
    add = gates.add_argument
    add("--min-speedup", type=float, metavar="X", help="every model after the first at least X times faster than it")
    add("--max-latency", metavar="MS", help="median latency at most MS ms; or per batch size, e.g. 1=5,8=30")
    add("--baseline", metavar="FILE", help="a --save-baseline file to compare with (models matched by file name)")
    add("--max-regression", metavar="PCT", help="with --baseline: at most PCT slower than stored (default 5%%)")
    add("--save-baseline", metavar="FILE", help="write this measurement, every timed run kept, as a baseline")
    add("--force", action="store_true", help="compare with a baseline measured on another machine or runtime")
    add("--confidence", type=float, default=0.95, metavar="P", help="confidence of the gates' intervals (default 0.95)")
    add("--max-rounds", type=int, default=3, metavar="N", help="most timings of an inconclusive batch (default 3)")
    add(
        "--inconclusive",
        choices=("point", "pass", "fail"),
        default="point",
        help="a gate still inconclusive after --max-rounds: decided by the point estimate (default), or pass/fail",
    )
    add("--junit", metavar="FILE", help="write JUnit XML: one testcase per gate")
    add("--markdown", metavar="FILE", help="write a markdown table for a CI job summary")


def gate_request(args: argparse.Namespace):
    """The GateRequest of the parsed options."""
    from onnxprune.bench.gates import GateSettings, parse_latency, parse_share
    from onnxprune.bench.gating import GateRequest

    settings = GateSettings(args.confidence, args.max_rounds, args.inconclusive, seed=args.seed)
    return GateRequest(
        args.min_speedup,
        parse_latency(args.max_latency) if args.max_latency is not None else {},
        args.baseline,
        parse_share(args.max_regression) if args.max_regression is not None else None,
        args.force,
        settings,
    )


def write_outputs(run, args: argparse.Namespace) -> None:
    """Print the table (or JSON), the gates and the failing ones (stderr); write the files asked for."""
    import sys

    from onnxprune.bench.baseline import save_baseline
    from onnxprune.bench.reports import gate_line, junit_xml, markdown, summary_line
    from onnxprune.model.io import atomic_write_text
    from onnxprune.report.console import stdout

    confidence = run.settings.confidence
    doc = run.to_dict()
    if args.json:
        stdout.print_json(json.dumps(doc))
    else:
        stdout.print(results_table(run.result))
        for line in run.notes + [gate_line(d, confidence) for d in run.decisions]:
            stdout.print(line, markup=False)
        if run.decisions:
            stdout.print(summary_line(run.decisions), markup=False)
    if args.save_baseline:
        writing("--save-baseline", args.save_baseline, lambda: save_baseline(run.result, args.save_baseline))
    if args.junit:
        properties = {key: doc[key] for key in ("ep", "provider", "device", "onnxruntime", "threads")}
        text = junit_xml(run.decisions, confidence, properties)
        writing("--junit", args.junit, lambda: atomic_write_text(Path(args.junit), text))
    if args.markdown:
        text = markdown(doc, run.decisions, confidence, run.notes)
        writing("--markdown", args.markdown, lambda: atomic_write_text(Path(args.markdown), text))
    for decision in run.failed:
        sys.stderr.write(f"onnxprune: gate failed: {gate_line(decision, confidence)}\n")


def writing(option: str, path: str, write) -> None:
    """`write()`, a file that cannot be written being one InputError line."""
    from onnxprune.errors import InputError

    try:
        write()
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write it ({exc.strerror or exc})") from None


def results_table(result):
    """A rich table: one row per model and batch size."""
    from rich.table import Table

    from onnxprune.report.console import human

    doc = result.to_dict()
    title = (
        f"ONNX Runtime {doc['onnxruntime']} {doc['provider']} on {doc['device']}, "
        f"{doc['iters']} timed runs{', IO binding' if doc['io_binding'] else ''}"
    )
    table = Table(title=title, title_justify="left")
    for column in (
        "model",
        "batch",
        "median ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "speedup",
        "MACs",
        "MACs red.",
        "speedup/MACs red.",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    macs = {m["path"]: m["macs"] for m in doc["models"]}
    for row in doc["results"]:
        table.add_row(
            Path(row["model"]).name,
            str(row["batch"]),
            f"{row['median_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['throughput']:.1f}",
            _times(row["speedup"]),
            human(macs[row["model"]]),
            _times(row["macs_reduction"]),
            f"{row['speedup_per_macs_reduction']:.2f}" if row["speedup_per_macs_reduction"] else "-",
        )
    return table


def _times(value) -> str:
    return f"{value:.2f}×" if value else "-"
