"""`onnxprune analyze MODEL`: the channel groups of a model, what couples them and what is frozen."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command


@SUBCOMMANDS.register("analyze")
class Analyze(Command):
    """`onnxprune analyze MODEL [--json]`."""

    help = "print the channel groups of a model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The model, --exclude and --json."""
        options.add_model(parser, "input .onnx file")
        options.add_exclude(parser, "freeze groups touching layers/weights matching this glob")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(self, args: argparse.Namespace) -> int:
        """Print the groups as a table (or JSON), with the MACs share that is prunable."""
        from onnxprune.analysis.analyze import load_and_analyze
        from onnxprune.report.console import print_analysis, stdout
        from onnxprune.report.document import group_rows, prunable_share
        from onnxprune.verify.verification import set_verification_shapes

        analysis = load_and_analyze(args.model, tuple(args.exclude))
        set_verification_shapes(analysis, None, required=False)  # MACs at the shape `prune` verifies at
        rows = group_rows(analysis.groups, analysis.view, shapes=analysis.macs_shapes)
        share = prunable_share(analysis.groups, analysis.view, analysis.macs_shapes)
        if args.json:
            stdout.print_json(json.dumps({"groups": rows, "prunable_macs_share": share}))
        else:
            print_analysis(rows, share, Path(args.model).name)
        return 0
