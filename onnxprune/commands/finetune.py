"""`onnxprune finetune MODEL --data DATA`: train a (pruned) model in torch, write it as ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxprune.commands import options
from onnxprune.commands.base import SUBCOMMANDS, Command
from onnxprune.errors import InputError

EXAMPLES = """examples:
  onnxprune finetune pruned.onnx --data train/ --val val.npz --epochs 30 --teacher model.onnx
  torchrun --nproc_per_node=4 -m onnxprune finetune pruned.onnx --data train/ --epochs 30
      data-parallel on 4 GPUs (NCCL; gloo on CPUs); --batch-size is the global batch
  onnxprune finetune pruned.onnx --data train/ --epochs 30 --unfold-bn
      BatchNormalization back after the folded convolutions for training, folded again on export
  onnxprune finetune pruned.onnx --data train/ --epochs 160 --reinit --scratch-budget flops --original model.onnx
      the pruned architecture from scratch, epochs scaled by the FLOPs saved (Scratch-B, at most 2x)
  onnxprune finetune model.onnx --data train/ --epochs 3 --group-lasso 1e-3 -o sparse.onnx
      push whole channel groups to zero, then prune sparse.onnx with --criterion l2"""


def add_training_options(sub: argparse.ArgumentParser) -> None:
    """Epochs, optimizer, learning rate, batch size, gradient clipping."""
    sub.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    sub.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="default sgd (momentum)")
    sub.add_argument("--lr", type=float, help="peak learning rate, cosine decay (default 0.01 sgd, 0.001 adamw)")
    sub.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    sub.add_argument("--weight-decay", type=float, help="default 5e-4 (sgd), 0.01 (adamw)")
    options.add_batch_size(sub, "batch size (default 64); under torchrun the global batch, split across processes")
    sub.add_argument(
        "--clip-grad",
        type=float,
        metavar="NORM",
        help="clip the gradients' global L2 norm to NORM (0: off; default 1, or 5 with --unfold-bn or "
        "--reinit). Exported models usually have BatchNormalization folded into the convolutions and "
        "diverge without it; with BN back training is stable and a norm of 1 slows it",
    )


def add_distillation_options(sub: argparse.ArgumentParser) -> None:
    """Teacher, augmentation, checkpoints, preprocessing, seed."""
    sub.add_argument("--teacher", metavar="ONNX", help="distil from this model (e.g. the unpruned original)")
    sub.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    sub.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    sub.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crop (padding H/8: 4 pixels on 32x32) and horizontal flip for NCHW images "
        "(default on; turn off for data that is not flip-invariant, e.g. digits or text)",
    )
    sub.add_argument("--checkpoint-dir", metavar="DIR", help="write DIR/last.pt after every epoch")
    sub.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    options.add_preprocess(sub, options.PREPROCESS_SPEC)
    options.add_seed(sub, "seed for the data order, augmentation and init")


def add_practice_options(sub: argparse.ArgumentParser) -> None:
    """--unfold-bn, --reinit with its epoch budget, --group-lasso."""
    sub.add_argument(
        "--unfold-bn",
        action="store_true",
        help="put BatchNormalization back after every Conv/Gemm whose BN the exporter folded (statistics from "
        "--data, so the model is unchanged at the start), train with batch statistics, fold back on export",
    )
    sub.add_argument(
        "--reinit",
        action="store_true",
        help="train the architecture from scratch: fresh weights (Kaiming), BatchNormalization put back",
    )
    sub.add_argument(
        "--scratch-budget",
        choices=("epochs", "flops"),
        default="epochs",
        help="with --reinit: train --epochs (Scratch-E, default) or --epochs x original FLOPs / pruned FLOPs, "
        "at most doubled (Scratch-B; needs --original or --teacher)",
    )
    sub.add_argument("--original", metavar="ONNX", help="the unpruned model, for --scratch-budget flops")
    sub.add_argument(
        "--group-lasso",
        type=float,
        default=0.0,
        metavar="LAMBDA",
        help="sparsity training: penalty LAMBDA x sum of the L2 norms of every prunable channel (all its "
        "members' slices), applied as a proximal step; reports the share of collapsed channels",
    )


@SUBCOMMANDS.register("finetune")
class Finetune(Command):
    """`onnxprune finetune MODEL --data DATA [-o OUT] ...`."""

    help = "fine-tune a (pruned) model on labelled data in torch"
    description = (
        "Train the model (converted to torch) on labelled data with cross-entropy and optional "
        "knowledge distillation from --teacher, then write it as ONNX. Needs the torch extra."
    )
    epilog = EXAMPLES
    verbatim = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Model, output, data, training and distillation options."""
        options.add_model(parser)
        options.add_output(parser, ".finetuned.onnx")
        parser.add_argument(
            "--data",
            metavar="PATH",
            help="training data: .npz (inputs and labels 'y') or an image folder class/xxx.jpg (required)",
        )
        parser.add_argument("--val", metavar="PATH", help="validation data (same formats); top-1 and loss per epoch")
        add_training_options(parser)
        add_distillation_options(parser)
        add_practice_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Fine-tune, write the model (rank 0 under torchrun), print a summary."""
        from onnxprune.report.console import stdout

        if not args.data:
            raise InputError(
                "finetune needs labelled training data: add --data PATH (.npz with 'y' or an image folder)"
            )
        output = options.output_path(args.model, args.output, ".finetuned.onnx")
        try:
            import torch  # noqa: F401

            from onnxprune.recover.finetune import finetune
            from onnxprune.recover.practices import Practices
        except ImportError:
            raise InputError("finetune needs torch: pip install 'onnxprune[torch]'") from None
        epochs = training_epochs(args)
        if epochs != args.epochs:
            stdout.print(f"Scratch-B budget: {epochs} epochs ({args.epochs} x the FLOPs saved, at most 2x)")
        result = finetune(
            Path(args.model),
            args.data,
            epochs=epochs,
            val=args.val,
            optimizer=args.optimizer,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            teacher=args.teacher,
            kd_alpha=args.kd_alpha,
            kd_temperature=args.kd_temperature,
            augment=args.augment,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            preprocess=args.preprocess,
            seed=args.seed,
            output=output,
            log=stdout.print,
            clip_grad=args.clip_grad,
            practices=Practices(unfold_bn=args.unfold_bn, reinit=args.reinit, group_lasso=args.group_lasso),
        )
        if result.rank != 0:  # torchrun: rank 0 reports and writes
            return 0
        stdout.print(summary_line(result))
        stdout.print(f"wrote {output}")
        return 0


def summary_line(result) -> str:
    """'fine-tuned N epochs on DEVICE in Ss; val top-1 A -> B'."""
    last = result.history[-1] if result.history else {}
    summary = f"fine-tuned {len(result.history)} epochs on {result.device} in {result.seconds:.1f}s"
    if "val_top1" in last:
        before = f"{result.initial['val_top1']:.2%} -> " if result.initial else ""
        summary += f"; val top-1 {before}{last['val_top1']:.2%}"
    return summary


def training_epochs(args: argparse.Namespace) -> int:
    """--epochs, or with --reinit --scratch-budget flops the Scratch-B budget (needs the original)."""
    from onnxprune.recover.reinit import scratch_epochs

    if args.scratch_budget == "epochs":
        return args.epochs
    if not args.reinit:
        raise InputError("--scratch-budget flops is the budget of --reinit: add --reinit")
    original = args.original or args.teacher
    if original is None:
        raise InputError("--scratch-budget flops needs the unpruned model: add --original ONNX")
    return scratch_epochs(args.epochs, "flops", model_macs_total(original), model_macs_total(args.model))


def model_macs_total(path) -> int:
    """A model's MACs at batch 1 (dynamic dims as 1), as the prune report counts them."""
    from onnxprune.analysis.analyze import load_and_analyze
    from onnxprune.analysis.cost import model_macs

    return sum(model_macs(load_and_analyze(path).view).values())
