"""One-shot against iterative pruning at the same total fine-tuning epochs (issue 17, item 2).

The shared CIFAR-10 ResNet-20 is pruned with L1 to ``--target`` of its MACs either in one shot
(least-squares reconstruction on ``--calib-samples`` images, unless ``--no-reconstruct``)
followed by ``--epochs`` epochs of fine-tuning, or in ``--steps`` rounds (``prune_iteratively``:
each round prunes the last round's output, reconstructs, then fine-tunes for its share of the same ``--epochs``),
both distilling from the unpruned model, on the first ``--train-images`` JPEG training images (crop +
flip), same seed, batch and learning rate. Printed: MACs kept, top-1 error on the lossless
``test1000.npz`` after each run, and the time. There is no goal to fail on: the literature finds the
two within noise at moderate ratios; the table says what this recipe gives.

    python benchmarks/iterative.py [--epochs 3] [--steps 3] [--train-images 10000] [--schedule geometric]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import onnx  # noqa: E402
from allocation import PREPROCESS, SHARED, test_set, top1  # noqa: E402
from common import table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402
from reproduce_table import train_subset  # noqa: E402

from onnxprune.analysis.analyze import load_and_analyze  # noqa: E402
from onnxprune.api import run_prune  # noqa: E402
from onnxprune.config import PruneConfig  # noqa: E402
from onnxprune.recover.chain import finetune_pruned  # noqa: E402
from onnxprune.recover.iterative import IterativeOptions, epochs_per_round, prune_iteratively  # noqa: E402

SOURCE = SHARED / "resnet20.onnx"


def finetuner(train: Path, epochs: list[int], args):
    """The fine-tuning after round `index`: its share of the epochs, distilled from the input."""

    original = load_and_analyze(SOURCE).model  # the teacher of every round, loaded once

    def finetune(result, index: int):
        if not epochs[index]:
            return result
        return finetune_pruned(
            result, SOURCE, train, epochs=epochs[index], preprocess=PREPROCESS, batch_size=args.batch_size,
            seed=args.seed, log=lambda line: print("   ", line, flush=True), original=original,
        )  # fmt: skip

    return finetune


def run(steps: int, train: Path, calib: Path, args, images, labels) -> dict:
    """Prune to the target in `steps` rounds with the epochs shared; one table row."""
    recovery = dict(calib=calib, calib_samples=args.calib_samples, preprocess=PREPROCESS, reconstruct=True)
    config = PruneConfig.from_keywords(
        criterion="l1", target_flops=args.target, seed=args.seed, **(recovery if args.reconstruct else {})
    )
    options = IterativeOptions(steps, args.schedule, finetuner(train, epochs_per_round(args.epochs, steps), args))
    started = time.perf_counter()
    if steps == 1:
        result = options.finetune(run_prune(SOURCE, config), 0)  # type: ignore[misc]
    else:
        result = prune_iteratively(SOURCE, config, options, log=lambda line: print("  ", line, flush=True))
    seconds = time.perf_counter() - started
    error = 100 * (1 - top1(result.model, images, labels))
    return {"steps": steps, "macs_kept": result.report["macs_ratio"], "error": error, "seconds": seconds}


def label(steps: int, schedule: str) -> str:
    """The run's name in the table."""
    return "one shot" if steps == 1 else f"{steps} rounds ({schedule})"


def main(argv=None) -> int:
    """Print the table (and write benchmarks/out/iterative.json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs to keep (default 0.5)")
    parser.add_argument("--epochs", type=int, default=3, help="total fine-tuning epochs (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="rounds of the iterative run (default 3)")
    parser.add_argument("--schedule", default="geometric", choices=("geometric", "cubic"))
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--calib-samples", type=int, default=500, help="reconstruction images per round")
    parser.add_argument(
        "--reconstruct", action=argparse.BooleanOptionalAction, default=True, help="least squares every round"
    )
    args = parser.parse_args(argv)
    full = extract_train(SHARED / "cifar10-jpg.tar.gz", args.cache)
    train = train_subset(full, args.train_images)
    images, labels = test_set()
    base = 100 * (1 - top1(onnx.load(str(SOURCE)), images, labels))
    rows = [run(steps, train, full, args, images, labels) for steps in (1, args.steps)]
    print(
        table(
            ["run", "MACs kept", "top-1 error %", "seconds"],
            [
                [label(r["steps"], args.schedule), f"{r['macs_kept']:.1%}", f"{r['error']:.2f}", f"{r['seconds']:.0f}"]
                for r in rows
            ],  # fmt: skip
            title=f"ResNet-20 (unpruned error {base:.2f} %), L1 to {args.target:.0%} MACs, {args.epochs} epochs in all "
            f"on {args.train_images} JPEG train images, distilled from the input",
        )
    )
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "iterative.json").write_text(json.dumps({"args": vars(args) | {"cache": str(args.cache)}, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
