"""`onnxprune sensitivity MODEL --calib DATA`: prune each group alone at several ratios, measure the effect."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.errors import InputError


@SUBCOMMANDS.register("sensitivity")
class Sensitivity(Command):
    """`onnxprune sensitivity MODEL --calib DATA [--ratios ...]`."""

    help = "prune each group alone at several ratios and measure the effect"
    description = (
        "Prune every prunable group alone at each ratio (channels chosen by --criterion) and measure "
        "on calibration data the relative L2 change of the first output and, with labels, the top-1 "
        "accuracy. Writes a JSON table and a plot."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The model, calibration data, ratios, criterion, workers, where to write."""
        options.add_model(parser)
        options.add_calibration_options(parser)
        parser.add_argument(
            "--ratios",
            default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
            help="comma-separated ratios in [0, 1) (default 0.1,0.2,...,0.9)",
        )
        options.add_criterion(parser, "which channels go first")
        parser.add_argument("--jobs", type=int, default=1, help="worker processes sharing the groups (default 1)")
        options.add_seed(parser, "seed for 'random' and the image order")
        parser.add_argument(
            "--json", dest="json_path", metavar="PATH", help="table of results (default: <model stem>.sensitivity.json)"
        )
        parser.add_argument("--plot", metavar="PATH", help="PNG plot (default: <model stem>.sensitivity.png)")

    def run(self, args: argparse.Namespace) -> int:
        """Run the study, write the table and the plot, print the summary."""
        from onnxprune.measure.sensitivity import SensitivityStudy, parse_ratios
        from onnxprune.report.console import progress_bar, stdout
        from onnxprune.report.sensitivity import summary_table

        if not args.calib:
            raise InputError("sensitivity needs calibration data: add --calib PATH (.npz/.npy or an image folder)")
        source = Path(args.model)
        json_path = Path(args.json_path or source.with_name(source.stem + ".sensitivity.json"))
        plot_path = Path(args.plot or source.with_name(source.stem + ".sensitivity.png"))
        with progress_bar(f"scoring channels ({args.criterion})") as advance:
            study = SensitivityStudy.prepare(
                source,
                args.calib,
                ratios=parse_ratios(args.ratios),
                criterion=args.criterion,
                calib_samples=args.calib_samples,
                preprocess=args.preprocess,
                batch_size=args.batch_size,
                jobs=args.jobs,
                seed=args.seed,
                progress=advance,
            )
        with progress_bar("measuring sensitivity", total=study.steps) as advance:
            result = study.run(advance)
        result.save_json(json_path)
        result.plot(plot_path)
        stdout.print(summary_table(result))
        stdout.print(f"wrote {json_path} and {plot_path}")
        return 0
