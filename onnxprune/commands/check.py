"""`onnxprune check PRUNED --against ORIGINAL [--plan PLAN]`: re-run the masked-reference check later."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.errors import InputError

DESCRIPTION = (
    "Re-run the masked-reference check of a stored pruned model: the original (which must be the "
    "plan's input, by SHA-256) with the plan's pruned channels masked must compute what the pruned "
    "model computes, and every weight the plan records as a slice must be exactly that slice. "
    "Prints one PASS/FAIL line with the largest relative output difference."
)

EPILOG = """examples:
  onnxprune check model.pruned.onnx --against model.onnx
  onnxprune check small.onnx --against model.onnx --plan small.plan.json --runs 5 --calib calib.npz

exit codes: 0 pass, 3 fail, 2 bad input (missing file, plan of another model, ...)"""


@SUBCOMMANDS.register("check")
class Check(Command):
    """`onnxprune check PRUNED --against ORIGINAL [--plan PLAN]`."""

    help = "re-check a pruned model against its original and plan"
    description = textwrap.fill(DESCRIPTION, 90)
    epilog = EPILOG
    verbatim = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The pruned model, its original and plan, the inputs to compare on."""
        parser.add_argument("pruned", help="the pruned .onnx file")
        parser.add_argument(
            "--against", required=True, metavar="ORIGINAL", help="the original .onnx file the plan was made from"
        )
        parser.add_argument("--plan", metavar="PLAN", help="plan file (default: <pruned stem>.plan.json beside it)")
        parser.add_argument("--runs", type=int, default=3, help="batches of seeded random inputs (default 3)")
        options.add_seed(parser, "seed of the first random batch (default 0)")
        options.add_calib(parser, "also compare on calibration data (.npz/.npy or image folder)")
        options.add_calib_samples(parser, 64, "calibration samples (default 64)")
        options.add_preprocess(parser, "preprocessing of images/uint8 arrays (as for prune)")

    def run(self, args: argparse.Namespace) -> int:
        """Run the check; print one PASS/FAIL line; 0 pass, 3 fail."""
        from onnxprune.select.plan import default_plan_path
        from onnxprune.verify.check import check_pruned, summary_line

        if args.runs < 1 and not args.calib:
            raise InputError(f"--runs must be at least 1 (or give --calib), got {args.runs}")
        pruned = Path(args.pruned)
        plan = Path(args.plan) if args.plan else default_plan_path(pruned)
        result = check_pruned(
            pruned,
            args.against,
            plan,
            seed=args.seed,
            runs=max(args.runs, 0),
            calib=args.calib,
            calib_samples=args.calib_samples,
            preprocess=args.preprocess,
        )
        print(summary_line(result, pruned.name))
        return 0 if result.ok else 3
