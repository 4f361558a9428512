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

The first model is the reference: every row gives the speedup over it at that batch size
(median latency / median latency) and its MACs reduction (its MACs / this model's MACs, batch 1).
Models are timed side by side, in interleaved blocks of --block runs (A B B A ...), so that other
load on the machine hits all of them alike."""


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

    def run(self, args: argparse.Namespace) -> int:
        """Time the models; print a table (or JSON)."""
        from onnxprune.bench.suite import BenchOptions, bench_models, parse_batches
        from onnxprune.report.console import progress_bar, stdout

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
        total = len(args.models) * len(timing.batches) * timing.blocks()
        with progress_bar(f"timing on {args.ep}", total=total) as advance:
            result = bench_models(args.models, timing, advance)
        if args.json:
            stdout.print_json(json.dumps(result.to_dict()))
        else:
            stdout.print(results_table(result))
        return 0


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
