"""`onnxprune prune MODEL` (the default command): prune, verify, optionally reconstruct and fine-tune."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from onnxprune.api import run_prune
from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.config import KEYWORDS, PruneConfig
from onnxprune.errors import InputError
from onnxprune.select.plan import default_plan_path

#: the options that differ from prune()'s keyword arguments (the rest have the same name, see config.KEYWORDS)
RENAMED = {"round_ep": "ep", "verify": "no_verify", "input_shapes": "shape"}


def round_to_arg(text: str):
    """--round-to: a positive integer or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got '{text}'") from None


def add_selection_options(sub: argparse.ArgumentParser) -> None:
    """Which channels go, how counts are rounded, which groups are left alone."""
    options.add_criterion(sub, "channel importance")
    sub.add_argument(
        "--ratio", type=float, default=0.5, help="fraction of each group's channels to remove, in [0, 1) (default 0.5)"
    )
    options.add_min_channels(sub)
    sub.add_argument(
        "--round-to",
        type=round_to_arg,
        default=1,
        metavar="N|auto",
        help="kept channel counts become multiples of N; 'auto': per group, the smallest count >= "
        "the requested one that no larger count (up to the next multiple of 32) beats in "
        "latency by more than 3%%, timed layer by layer on --ep (timings cached on disk)",
    )
    options.add_ep(sub, "--round-to auto: execution provider to time on: cpu, cuda, tensorrt (default cpu)")
    sub.add_argument(
        "--round-batch", type=int, default=1, metavar="B", help="--round-to auto: batch size to time at (default 1)"
    )
    sub.add_argument(
        "--scope",
        choices=("local", "global"),
        default="local",
        help="local: ratio per group; global: rank normalized scores across groups",
    )
    options.add_exclude(sub, "freeze groups touching layers/weights matching this glob (repeatable)")
    options.add_seed(sub, "seed for 'random' and the verification inputs")


def add_allocation_options(sub: argparse.ArgumentParser) -> None:
    """Targets and allocation strategies (replace --ratio)."""
    from onnxprune.select.allocation import STRATEGIES, STUDY_SAMPLES

    group = sub.add_argument_group("targets (instead of --ratio, one ratio per group is chosen)")
    group.add_argument(
        "--target-flops", metavar="F", help="MACs of the pruned model: a fraction (0.5) or absolute (2.1G)"
    )
    group.add_argument("--target-params", metavar="P", help="parameters: a fraction (0.5) or absolute (500k)")
    group.add_argument("--target-latency", metavar="MS", help="ONNX Runtime CPU latency at batch 1, milliseconds")
    group.add_argument(
        "--allocate",
        choices=sorted(STRATEGIES),
        metavar="STRATEGY",
        help=f"how to spread the budget: {', '.join(sorted(STRATEGIES))} (default uniform)",
    )
    group.add_argument("--layerwise", metavar="FILE", help="JSON/YAML map of group id or layer name to ratio")
    group.add_argument("--samples", type=int, default=64, help="random-search: candidates to evaluate (default 64)")
    group.add_argument(
        "--jobs", type=int, default=1, help="random-search: processes for the raw measurement (default 1)"
    )
    group.add_argument(
        "--allocate-samples",
        type=int,
        default=STUDY_SAMPLES,
        metavar="N",
        help=f"sensitivity and random-search measure on the first N calibration samples (default "
        f"{STUDY_SAMPLES}; 0: all). Reconstruction and --recover use all of them. On ResNet-56 the "
        "sensitivity study on 128 images chose as well as on 500, in a third of the time",
    )
    group.add_argument(
        "--search-eval",
        metavar="MODE",
        help="random-search: how candidates are ranked. raw (default): output change of the raw pruned "
        "model, fast; reconstruct: held-out output error after a least-squares reconstruction of each "
        "candidate (--ridge); kd-steps:N: held-out output error against the input model after N "
        "distillation steps of each candidate (torch). The recovered modes rank by what the model "
        "becomes after recovery, at a recovery per candidate (needs --calib)",
    )
    group.add_argument(
        "--plot",
        metavar="DIR",
        help="write PNG plots here: kept_per_layer.png (fraction of "
        "channels kept per layer) and, for random-search, random_search.png",
    )


def add_verification_options(sub: argparse.ArgumentParser) -> None:
    """The masked-reference check, and the residual stream (verified against its own reference)."""
    sub.add_argument("--no-verify", action="store_true", help="skip the masked-reference check")
    sub.add_argument(
        "--prune-residual",
        action="store_true",
        help="also prune the channels LayerNorms normalize over (a transformer's residual stream), "
        "in every LayerNorm, projection and embedding; the LayerNorms then normalize over "
        "the kept channels",
    )
    options.add_shape(
        sub,
        "input shape for the verification (and the MACs) where dimensions are dynamic, e.g. "
        "input=2x3x224x224; repeatable (default: batch 2, other dynamic dimensions from "
        "exporter hints or the first probed size ONNX Runtime runs)",
    )
    sub.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 3) when the pruned model fails verification, instead of freezing "
        "the groups whose pruning fails (found by bisection) and pruning the rest",
    )


def add_recovery_options(sub: argparse.ArgumentParser) -> None:
    """The chain (fine-tuning after pruning, iterative rounds), least-squares reconstruction and
    label-free distillation."""
    add_chain_options(sub)
    sub.add_argument(
        "--reconstruct",
        action="store_true",
        help="after verification, refit each pruned layer's kept weights and bias by least squares "
        "to the unpruned model's layer outputs on --calib data (needs --calib)",
    )
    add_distillation_options(sub)
    sub.add_argument(
        "--eval-tokens",
        metavar="FILE",
        help="held-out token ids (.npz: input_ids, and attention_mask if the model takes it) of a causal "
        "LM whose first output is logits [batch, sequence, vocab]: report its perplexity (exp of the "
        "mean next-token cross-entropy, ONNX Runtime) before and after pruning",
    )
    sub.add_argument(
        "--ridge",
        type=ridge_value,
        default=None,
        metavar="auto|L",
        help="--reconstruct: ridge λ, relative to the mean diagonal of XᵀX, for every layer; 'auto' "
        "(default): chosen per layer from the error on held-out calibration samples",
    )


def add_chain_options(sub: argparse.ArgumentParser) -> None:
    """Fine-tuning after pruning in the same command, and iterative pruning (--steps)."""
    chain = sub.add_argument_group("one command: prune -> reconstruct -> fine-tune -> check -> bench")
    chain.add_argument(
        "--finetune-data",
        metavar="DATA",
        help="labelled training data (.npz with y, or an "
        "image folder): fine-tune the pruned model, distilling from the input model",
    )
    chain.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    chain.add_argument(
        "--steps",
        type=int,
        default=1,
        metavar="K",
        help="iterative pruning: K rounds of prune -> (reconstruct) -> fine-tune, each pruning the "
        "last round's output, --finetune-epochs shared by the rounds; the plan is relative to the "
        "input (default 1: one shot)",
    )
    chain.add_argument(
        "--schedule",
        choices=("geometric", "cubic"),
        default="geometric",
        help="--steps: geometric cuts the same share of what remains each round; cubic cuts most "
        "in the first rounds (default geometric)",
    )
    chain.add_argument("--val", metavar="DATA", help="validation data for the fine-tuning")
    chain.add_argument("--no-teacher", action="store_true", help="fine-tune without distillation")
    chain.add_argument(
        "--no-augment",
        action="store_true",
        help="no random crop/flip (for data that is not flip-invariant, e.g. digits)",
    )


def add_distillation_options(sub: argparse.ArgumentParser) -> None:
    """--recover kd and its budget."""
    kd = sub.add_argument_group(
        "label-free recovery (after --reconstruct when both are given; needs --calib, labels are not used)"
    )
    kd.add_argument(
        "--recover",
        choices=("kd",),
        help="kd: distill the pruned model from the input model on the --calib images (random crop + flip), "
        "keep the checkpoint that agrees best with the input model on held-out calibration images, and keep "
        "the model unchanged if none beats it",
    )
    kd.add_argument(
        "--recover-time",
        type=float,
        metavar="SECONDS",
        help="--recover: wall-time budget; the learning rate anneals to zero by then (default 300, or "
        "unbounded when only --recover-steps is given)",
    )
    kd.add_argument("--recover-steps", type=int, metavar="N", help="--recover: at most N optimizer steps")
    kd.add_argument("--recover-lr", type=float, metavar="LR", help="--recover: peak learning rate (default 0.01)")


def ridge_value(text: str) -> float | None:
    """`--ridge`: 'auto' (None) or a number."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The one `PruneConfig` the prune options describe."""
    keywords = {name: getattr(args, name) for name in KEYWORDS if name not in RENAMED}
    return PruneConfig.from_keywords(
        **keywords,
        seed=args.seed,
        round_ep=args.ep,
        verify=not args.no_verify,
        input_shapes=options.input_shapes(args.shape) or None,
    )


@SUBCOMMANDS.register("prune")
class Prune(Command):
    """`onnxprune prune MODEL ...`, also `onnxprune MODEL ...`."""

    help = "prune a model (the default command)"
    description = "Prune a model; 'onnxprune MODEL ...' means 'onnxprune prune MODEL ...'."
    #: the chain's fine-tuning (recover.chain.finetune_pruned) is set by --finetune-* options
    flags: ClassVar[dict[str, str]] = {
        "data": "--finetune-data",
        "epochs": "--finetune-epochs",
        "teacher": "--no-teacher",
        "augment": "--no-augment",
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Model and output, selection, calibration, targets, verification, recovery, where to write."""
        options.add_model(parser)
        options.add_output(parser, ".pruned.onnx")
        add_selection_options(parser)
        options.add_calibration_options(parser)
        add_allocation_options(parser)
        add_verification_options(parser)
        add_recovery_options(parser)
        parser.add_argument("--plan", help="plan file (default: <output stem>.plan.json)")
        parser.add_argument("--report", help="also write the report as JSON here")

    def run(self, args: argparse.Namespace) -> int:
        """Prune (and fine-tune with --finetune-data), write model, plan and report, print the report."""
        from onnxprune.report.console import print_report, progress_bar, stdout

        source = Path(args.model)
        output = options.output_path(args.model, args.output, ".pruned.onnx")
        plan_path = Path(args.plan) if args.plan else default_plan_path(output)
        plot_dir = Path(args.plot) if args.plot else None
        if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
            raise InputError(f"--plot {plot_dir}: not a folder")
        config = prune_config(args)
        if args.steps != 1:
            result = prune_in_rounds(source, config, args)
        else:
            with progress_bar(f"scoring channels ({args.criterion})") as advance:
                result = run_prune(source, config, advance, stdout.print)
            if args.finetune_data:
                result = finetune_chain(result, source, args, args.finetune_epochs)
        result.save(output, plan_path, args.report)
        print_report(result.report, str(output), str(plan_path))
        if plot_dir is not None:
            save_plots(result, plot_dir)
        return 0


def finetune_chain(result, source: Path, args: argparse.Namespace, epochs: int, original=None):
    """The chain's fine-tuning of `result` for `epochs` (distilling from `source` unless --no-teacher;
    `original`: `source` already loaded)."""
    from onnxprune.recover.chain import finetune_pruned
    from onnxprune.report.console import stdout

    return finetune_pruned(
        result,
        source,
        args.finetune_data,
        epochs=epochs,
        val=args.val,
        preprocess=args.preprocess,
        batch_size=args.batch_size,
        seed=args.seed,
        teacher=not args.no_teacher,
        augment=not args.no_augment,
        log=stdout.print,
        original=original,
    )


def prune_in_rounds(source: Path, config: PruneConfig, args: argparse.Namespace):
    """--steps K: iterative pruning, the fine-tuning epochs shared by the rounds."""
    from onnxprune.recover.iterative import IterativeOptions, epochs_per_round, prune_iteratively
    from onnxprune.report.console import progress_bar, stdout

    finetune = None
    if args.finetune_data and args.steps >= 1:
        from onnxprune.analysis.analyze import load_and_analyze

        epochs = epochs_per_round(args.finetune_epochs, args.steps)
        original = load_and_analyze(source).model  # the teacher of every round, loaded once

        def finetune(result, index: int):
            return finetune_chain(result, source, args, epochs[index], original) if epochs[index] else result

    with progress_bar(f"{args.steps} rounds of pruning ({args.criterion})") as advance:
        return prune_iteratively(
            source, config, IterativeOptions(args.steps, args.schedule, finetune), advance, stdout.print
        )


def save_plots(result, directory: Path) -> None:
    """The allocation plots; the per-layer fractions come from the report (or, after a plain
    --ratio run, from the plan)."""
    from onnxprune.report.console import stdout
    from onnxprune.report.plots import kept_per_layer, save_allocation_plots

    layers = (result.report.get("allocation") or {}).get("layers")
    if layers is None:
        layers = kept_per_layer(
            result.model.graph.node, result.groups, {g["id"]: g["kept"] for g in result.plan["groups"]}
        )
    paths = save_allocation_plots(result.report, directory, layers)
    stdout.print("wrote " + " and ".join(str(p) for p in paths))
