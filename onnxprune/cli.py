"""The `onnxprune` command line: `onnxprune MODEL --criterion l1 --ratio 0.5 -o OUT`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from onnxprune import __version__
from onnxprune.api import default_plan_path, load_and_analyze, prune
from onnxprune.commands import add_parsers as add_command_parsers
from onnxprune.commands import command_names
from onnxprune.criteria import CRITERIA
from onnxprune.errors import InputError, OnnxPruneError
from onnxprune.report.console import progress_bar
from onnxprune.report.document import group_rows, prunable_share

EXAMPLES = """examples:
  onnxprune model.onnx --ratio 0.5                 prune half of every group's channels (L1)
  onnxprune model.onnx --criterion fpgm --ratio 0.3 --round-to 8 -o small.onnx
  onnxprune model.onnx --scope global --exclude '*/head/*'
  onnxprune analyze model.onnx                     which channels are coupled, what is frozen and why
  onnxprune ops                                    ops with a channel rule

exit codes: 0 ok, 2 bad input (one line on stderr, nothing written),
            3 the pruned model failed verification (nothing written; without --strict only
              when freezing the failing groups does not help),
            4 fine-tuning diverged (nothing written)"""

FINETUNE_EXAMPLES = """examples:
  onnxprune finetune pruned.onnx --data train/ --val val.npz --epochs 30 --teacher model.onnx
  torchrun --nproc_per_node=4 -m onnxprune finetune pruned.onnx --data train/ --epochs 30
      data-parallel on 4 GPUs (NCCL; gloo on CPUs); --batch-size is the global batch"""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr with exit code 2."""

    def error(self, message: str):
        """Print one line and exit 2."""
        sys.stderr.write(f"onnxprune: error: {message} (see 'onnxprune --help')\n")
        raise SystemExit(2)


def build_parser() -> Parser:
    """The argument parser with the prune, analyze and ops commands."""
    parser = Parser(prog="onnxprune", description="Structured channel pruning of ONNX models. "
                    "Finds coupled channels, scores them, writes a smaller model and proves it "
                    "computes what the input model computes with those channels masked.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_prune(commands)
    _add_analyze(commands)
    _add_sensitivity(commands)
    _add_finetune(commands)
    add_command_parsers(commands)
    ops = commands.add_parser("ops", help="print the op-coverage table (which ops have channel rules)")
    ops.set_defaults(func=run_ops)
    return parser


def _add_prune(commands) -> None:
    sub = commands.add_parser("prune", help="prune a model (the default command)",
                              description="Prune a model; 'onnxprune MODEL ...' means 'onnxprune prune MODEL ...'.")
    sub.add_argument("model", help="input .onnx file (never modified)")
    sub.add_argument("-o", "--output", help="output model (default: <input stem>.pruned.onnx)")
    sub.add_argument("--criterion", default="l1", choices=sorted(CRITERIA), metavar="NAME",
                     help=f"channel importance: {', '.join(sorted(CRITERIA))} (default l1)")
    sub.add_argument("--ratio", type=float, default=0.5,
                     help="fraction of each group's channels to remove, in [0, 1) (default 0.5)")
    sub.add_argument("--min-channels", type=int, default=1, help="keep at least this many per layer (default 1)")
    sub.add_argument("--round-to", type=round_to_arg, default=1, metavar="N|auto",
                     help="kept channel counts become multiples of N; 'auto': per group, the smallest count >= "
                          "the requested one that no larger count (up to the next multiple of 32) beats in "
                          "latency by more than 3%%, timed layer by layer on --ep (timings cached on disk)")
    sub.add_argument("--ep", default="cpu", choices=("cpu", "cuda", "tensorrt"), metavar="EP",
                     help="--round-to auto: execution provider to time on: cpu, cuda, tensorrt (default cpu)")
    sub.add_argument("--round-batch", type=int, default=1, metavar="B",
                     help="--round-to auto: batch size to time at (default 1)")
    sub.add_argument("--scope", choices=("local", "global"), default="local",
                     help="local: ratio per group; global: rank normalized scores across groups")
    sub.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="freeze groups touching layers/weights matching this glob (repeatable)")
    sub.add_argument("--seed", type=int, default=0, help="seed for 'random' and the verification inputs")
    add_calibration_options(sub)
    add_allocation_options(sub)
    sub.add_argument("--no-verify", action="store_true", help="skip the masked-reference check")
    sub.add_argument("--prune-residual", action="store_true",
                     help="also prune the channels LayerNorms normalize over (a transformer's residual stream), "
                          "in every LayerNorm, projection and embedding; the LayerNorms then normalize over "
                          "the kept channels")
    sub.add_argument("--shape", action="append", default=[], metavar="NAME=DxDx...",
                     help="input shape for the verification (and the MACs) where dimensions are dynamic, e.g. "
                          "input=2x3x224x224; repeatable (default: batch 2, other dynamic dimensions from "
                          "exporter hints or the first probed size ONNX Runtime runs)")
    sub.add_argument("--strict", action="store_true",
                     help="refuse (exit 3) when the pruned model fails verification, instead of freezing "
                          "the groups whose pruning fails (found by bisection) and pruning the rest")
    chain = sub.add_argument_group("one command: prune -> reconstruct -> fine-tune -> check -> bench")
    chain.add_argument("--finetune-data", metavar="DATA", help="labelled training data (.npz with y, or an "
                       "image folder): fine-tune the pruned model, distilling from the input model")
    chain.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    chain.add_argument("--val", metavar="DATA", help="validation data for the fine-tuning")
    chain.add_argument("--no-teacher", action="store_true", help="fine-tune without distillation")
    chain.add_argument("--no-augment", action="store_true",
                       help="no random crop/flip (for data that is not flip-invariant, e.g. digits)")
    sub.add_argument("--reconstruct", action="store_true",
                     help="after verification, refit each pruned layer's kept weights and bias by least squares "
                          "to the unpruned model's layer outputs on --calib data (needs --calib)")
    sub.add_argument("--ridge", type=float, default=1e-4, metavar="L",
                     help="--reconstruct: ridge λ, relative to the mean diagonal of XᵀX (default 1e-4)")
    sub.add_argument("--plan", help="plan file (default: <output stem>.plan.json)")
    sub.add_argument("--report", help="also write the report as JSON here")
    sub.set_defaults(func=run_prune)


def round_to_arg(text: str):
    """--round-to: a positive integer or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got '{text}'") from None


def add_allocation_options(sub) -> None:
    """Targets and allocation strategies (replace --ratio)."""
    from onnxprune.select.allocation import STRATEGIES

    group = sub.add_argument_group("targets (instead of --ratio, one ratio per group is chosen)")
    group.add_argument("--target-flops", metavar="F", help="MACs of the pruned model: a fraction (0.5) or absolute (2.1G)")
    group.add_argument("--target-params", metavar="P", help="parameters: a fraction (0.5) or absolute (500k)")
    group.add_argument("--target-latency", metavar="MS", help="ONNX Runtime CPU latency at batch 1, milliseconds")
    group.add_argument("--allocate", choices=sorted(STRATEGIES), metavar="STRATEGY",
                       help=f"how to spread the budget: {', '.join(sorted(STRATEGIES))} (default uniform)")
    group.add_argument("--layerwise", metavar="FILE", help="JSON/YAML map of group id or layer name to ratio")
    group.add_argument("--samples", type=int, default=64, help="random-search: candidates to evaluate (default 64)")
    group.add_argument("--jobs", type=int, default=1, help="random-search: processes (default 1)")
    group.add_argument("--plot", metavar="DIR", help="write PNG plots here: kept_per_layer.png (fraction of "
                       "channels kept per layer) and, for random-search, random_search.png")


def add_calibration_options(sub) -> None:
    """--calib, --calib-samples, --preprocess, --batch-size."""
    sub.add_argument("--calib", metavar="PATH",
                     help="calibration data for data-driven criteria: .npz/.npy (arrays named like the "
                          "model input, or 'x'; labels 'y') or an image folder class/xxx.jpg")
    sub.add_argument("--calib-samples", type=int, default=512, metavar="N",
                     help="calibration samples to use (default 512)")
    sub.add_argument("--preprocess", metavar="SPEC",
                     help="for images/uint8 arrays, e.g. 'resize=32,scale=255,mean=0.485/0.456/0.406,"
                          "std=0.229/0.224/0.225,layout=nchw' (default scale=255, layout from the model)")
    sub.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default 64)")


def _add_analyze(commands) -> None:
    sub = commands.add_parser("analyze", help="print the channel groups of a model")
    sub.add_argument("model", help="input .onnx file")
    sub.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="freeze groups touching layers/weights matching this glob")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(func=run_analyze)


def _add_sensitivity(commands) -> None:
    sub = commands.add_parser("sensitivity", help="prune each group alone at several ratios and measure the effect",
                              description="Prune every prunable group alone at each ratio (channels chosen by "
                              "--criterion) and measure on calibration data the relative L2 change of the "
                              "first output and, with labels, the top-1 accuracy. Writes a JSON table and a plot.")
    sub.add_argument("model", help="input .onnx file (never modified)")
    add_calibration_options(sub)
    sub.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                     help="comma-separated ratios in [0, 1) (default 0.1,0.2,...,0.9)")
    sub.add_argument("--criterion", default="l1", choices=sorted(CRITERIA), metavar="NAME",
                     help=f"which channels go first: {', '.join(sorted(CRITERIA))} (default l1)")
    sub.add_argument("--jobs", type=int, default=1, help="worker processes sharing the groups (default 1)")
    sub.add_argument("--seed", type=int, default=0, help="seed for 'random' and the image order")
    sub.add_argument("--json", dest="json_path", metavar="PATH",
                     help="table of results (default: <model stem>.sensitivity.json)")
    sub.add_argument("--plot", metavar="PATH", help="PNG plot (default: <model stem>.sensitivity.png)")
    sub.set_defaults(func=run_sensitivity)


def _add_finetune(commands) -> None:
    sub = commands.add_parser("finetune", help="fine-tune a (pruned) model on labelled data in torch",
                              description="Train the model (converted to torch) on labelled data with "
                              "cross-entropy and optional knowledge distillation from --teacher, then write it "
                              "as ONNX. Needs the torch extra.", epilog=FINETUNE_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("model", help="input .onnx file (never modified)")
    sub.add_argument("-o", "--output", help="output model (default: <input stem>.finetuned.onnx)")
    sub.add_argument("--data", metavar="PATH", help="training data: .npz (inputs and labels 'y') or an image "
                     "folder class/xxx.jpg (required)")
    sub.add_argument("--val", metavar="PATH", help="validation data (same formats); top-1 and loss per epoch")
    sub.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    sub.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="default sgd (momentum)")
    sub.add_argument("--lr", type=float, help="peak learning rate, cosine decay (default 0.01 sgd, 0.001 adamw)")
    sub.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    sub.add_argument("--weight-decay", type=float, help="default 5e-4 (sgd), 0.01 (adamw)")
    sub.add_argument("--batch-size", type=int, default=64,
                     help="batch size (default 64); under torchrun the global batch, split across processes")
    sub.add_argument("--clip-grad", type=float, default=1.0, metavar="NORM",
                     help="clip the gradients' global L2 norm to NORM (default 1; 0: off). Exported models "
                          "usually have BatchNormalization folded into the convolutions and diverge without it")
    sub.add_argument("--teacher", metavar="ONNX", help="distil from this model (e.g. the unpruned original)")
    sub.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    sub.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    sub.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                     help="random crop (padding H/8: 4 pixels on 32x32) and horizontal flip for NCHW images "
                          "(default on; turn off for data that is not flip-invariant, e.g. digits or text)")
    sub.add_argument("--checkpoint-dir", metavar="DIR", help="write DIR/last.pt after every epoch")
    sub.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    sub.add_argument("--preprocess", metavar="SPEC",
                     help="for images/uint8 arrays, e.g. 'resize=32,scale=255,mean=0.485/0.456/0.406,"
                          "std=0.229/0.224/0.225,layout=nchw'")
    sub.add_argument("--seed", type=int, default=0, help="seed for the data order, augmentation and init")
    sub.set_defaults(func=run_finetune)


def _input_shapes(items: list[str]) -> dict | None:
    """--shape NAME=DxDx... items as a dict (None when none were given)."""
    from onnxprune.bench.suite import parse_shapes

    return parse_shapes(items) or None


def run_prune(args) -> int:
    """The prune command."""
    from onnxprune.report.console import print_report, stdout

    source = Path(args.model)
    output = Path(args.output) if args.output else source.with_name(source.stem + ".pruned.onnx")
    if output.resolve() == source.resolve():
        raise InputError(f"output path {output} is the input; choose another with -o")
    plan_path = Path(args.plan) if args.plan else default_plan_path(output)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise InputError(f"--plot {plot_dir}: not a folder")
    with progress_bar(f"scoring channels ({args.criterion})") as advance:
        result = prune(source, args.criterion, args.ratio, min_channels=args.min_channels,
                       round_to=args.round_to, scope=args.scope, exclude=args.exclude,
                       seed=args.seed, verify=not args.no_verify, calib=args.calib,
                       calib_samples=args.calib_samples, preprocess=args.preprocess,
                       batch_size=args.batch_size, progress=advance, target_flops=args.target_flops,
                       target_params=args.target_params, target_latency=args.target_latency,
                       allocate=args.allocate, layerwise=args.layerwise, samples=args.samples, jobs=args.jobs,
                       reconstruct=args.reconstruct, ridge=args.ridge, round_ep=args.ep,
                       round_batch=args.round_batch, input_shapes=_input_shapes(args.shape),
                       prune_residual=args.prune_residual, strict=args.strict)
    if args.finetune_data:
        from onnxprune.recover.chain import finetune_pruned

        result = finetune_pruned(result, source, args.finetune_data, epochs=args.finetune_epochs,
                                 val=args.val, preprocess=args.preprocess, batch_size=args.batch_size,
                                 seed=args.seed, teacher=not args.no_teacher, augment=not args.no_augment,
                                 log=stdout.print)
    result.save(output, plan_path, args.report)
    print_report(result.report, str(output), str(plan_path))
    if plot_dir is not None:
        _save_plots(result, plot_dir)
    return 0


def _save_plots(result, directory: Path) -> None:
    """The allocation plots; the per-layer fractions come from the report (or, after a plain
    --ratio run, from the plan)."""
    from onnxprune.report.console import stdout
    from onnxprune.report.plots import kept_per_layer, save_allocation_plots

    layers = (result.report.get("allocation") or {}).get("layers")
    if layers is None:
        layers = kept_per_layer(result.model.graph.node, result.groups,
                                {g["id"]: g["kept"] for g in result.plan["groups"]})
    paths = save_allocation_plots(result.report, directory, layers)
    stdout.print("wrote " + " and ".join(str(p) for p in paths))


def run_analyze(args) -> int:
    """The analyze command."""
    import json

    from onnxprune.report.console import print_analysis, stdout
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


def run_sensitivity(args) -> int:
    """The sensitivity command."""
    from onnxprune.measure.sensitivity import SensitivityStudy, parse_ratios
    from onnxprune.report.console import stdout
    from onnxprune.report.sensitivity import summary_table

    if not args.calib:
        raise InputError("sensitivity needs calibration data: add --calib PATH (.npz/.npy or an image folder)")
    source = Path(args.model)
    json_path = Path(args.json_path or source.with_name(source.stem + ".sensitivity.json"))
    plot_path = Path(args.plot or source.with_name(source.stem + ".sensitivity.png"))
    with progress_bar(f"scoring channels ({args.criterion})") as advance:
        study = SensitivityStudy.prepare(source, args.calib, ratios=parse_ratios(args.ratios),
                                         criterion=args.criterion, calib_samples=args.calib_samples,
                                         preprocess=args.preprocess, batch_size=args.batch_size,
                                         jobs=args.jobs, seed=args.seed, progress=advance)
    with progress_bar("measuring sensitivity", total=study.steps) as advance:
        result = study.run(advance)
    result.save_json(json_path)
    result.plot(plot_path)
    stdout.print(summary_table(result))
    stdout.print(f"wrote {json_path} and {plot_path}")
    return 0


def run_finetune(args) -> int:
    """The finetune command."""
    from onnxprune.report.console import stdout

    if not args.data:
        raise InputError("finetune needs labelled training data: add --data PATH (.npz with 'y' or an image folder)")
    source = Path(args.model)
    output = Path(args.output) if args.output else source.with_name(source.stem + ".finetuned.onnx")
    if output.resolve() == source.resolve():
        raise InputError(f"output path {output} is the input; choose another with -o")
    try:
        import torch  # noqa: F401

        from onnxprune.recover.finetune import finetune
    except ImportError:
        raise InputError("finetune needs torch: pip install 'onnxprune[torch]'") from None
    result = finetune(source, args.data, epochs=args.epochs, val=args.val, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      teacher=args.teacher, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                      augment=args.augment, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                      preprocess=args.preprocess, seed=args.seed, output=output, log=stdout.print,
                      clip_grad=args.clip_grad)
    if result.rank != 0:  # torchrun: rank 0 reports and writes
        return 0
    last = result.history[-1] if result.history else {}
    summary = f"fine-tuned {len(result.history)} epochs on {result.device} in {result.seconds:.1f}s"
    if "val_top1" in last:
        before = f"{result.initial['val_top1']:.2%} -> " if result.initial else ""
        summary += f"; val top-1 {before}{last['val_top1']:.2%}"
    stdout.print(summary)
    stdout.print(f"wrote {output}")
    return 0


def run_ops(args) -> int:
    """The ops command."""
    from onnxprune.report.console import print_rules

    print_rules()
    return 0


COMMANDS = ("prune", "analyze", "sensitivity", "finetune", "ops") + command_names()


def _interrupt_on_sigterm():
    """SIGTERM (a pipeline's `kill`) ends the command like Ctrl-C: temporary files are removed and
    no output is left half-written. Returns the previous handler (None off the main thread)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "prune")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    previous = _interrupt_on_sigterm()
    try:
        return args.func(args)
    except OnnxPruneError as exc:
        sys.stderr.write(f"onnxprune: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("onnxprune: interrupted; nothing was written\n")
        return 130
    except Exception as exc:  # a bug: say so in one line; ONNXPRUNE_DEBUG=1 shows the traceback
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        sys.stderr.write(f"onnxprune: internal error: {type(exc).__name__}: {exc} "
                         "(nothing was written; rerun with ONNXPRUNE_DEBUG=1 for the traceback)\n")
        return 1
    finally:
        _restore_sigterm(previous)


if __name__ == "__main__":
    raise SystemExit(main())
