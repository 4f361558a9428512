"""Fine-tuning practices on the shared ResNet-20 (issue 17), measured on CPU.

1. ``--unfold-bn``: ResNet-20 pruned to 50 % of the MACs with L1 (``onnxprune resnet20.onnx
   --target-flops 0.5``), fine-tuned with and without BatchNormalization unfolded, same seed,
   data order and schedule (SGD, lr 0.01 cosine, gradient clipping 1, batch 64, augmentation);
   top-1 error on ``test1000.npz``. The full run is 3 epochs over the 50,000 JPEG training
   images (extracted once outside the repository, see criteria.py); ``--images`` and ``--epochs``
   make a smaller quick run (the first N/10 images of each class).
2. ``--group-lasso``: the unpruned ResNet-20 trained with the penalty for ``--lasso-epochs``; the
   share of channels that collapsed (norm <= 1e-3 of the median), top-1 before and after cutting
   exactly those channels (a plan keeping the others, applied to the trained model).

Exits 1 when ``--unfold-bn`` does not lower the error by at least ``--min-gain`` points (default 2).

    python benchmarks/training.py                       # full: 3 epochs x 50,000 images (hours on 2 cores)
    python benchmarks/training.py --images 10000 --epochs 1 --lasso-epochs 1   # quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from criteria import ARCHIVE, DATA, DEFAULT_CACHE, PREPROCESS, TEST, extract_train, load_test, top1  # noqa: E402

from onnxprune.analysis.analyze import load_and_analyze  # noqa: E402
from onnxprune.api import prune  # noqa: E402
from onnxprune.passes.apply_plan import apply_plan  # noqa: E402
from onnxprune.recover.finetune import finetune  # noqa: E402
from onnxprune.recover.group_lasso import GroupLasso  # noqa: E402
from onnxprune.recover.practices import Practices  # noqa: E402
from onnxprune.select.plan import PruningPlan  # noqa: E402
from onnxprune.torch import to_torch  # noqa: E402

MODEL = DATA / "resnet20.onnx"


def subset(train: Path, images: int | None, root: Path) -> Path:
    """`train`, or a folder of links to the first images/10 (sorted) images of each class."""
    if images is None:
        return train
    folder = root / f"train-{images}"
    for cls in sorted(p for p in train.iterdir() if p.is_dir()):
        (folder / cls.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(cls.iterdir())[: images // 10]:
            (folder / cls.name / image.name).symlink_to(image)
    return folder


def run(model, data: Path, epochs: int, practices: Practices, seed: int) -> dict:
    """One fine-tuning run: its final test1000 top-1, the history and the trained model."""
    t0 = time.perf_counter()
    result = finetune(
        model, data, epochs=epochs, val=TEST, preprocess=PREPROCESS, seed=seed, practices=practices, log=print
    )
    return {"top1": result.history[-1]["val_top1"], "result": result, "seconds": time.perf_counter() - t0}


def unfold_measurement(data: Path, epochs: int, seed: int, tmp: Path) -> tuple[float, float]:
    """Top-1 error (points) of the pruned ResNet-20 fine-tuned without and with --unfold-bn."""
    pruned = tmp / "resnet20.pruned.onnx"
    onnx.save(prune(MODEL, "l1", target_flops=0.5).model, str(pruned))
    errors = []
    for unfold in (False, True):
        print(f"--- fine-tune {'with' if unfold else 'without'} --unfold-bn", flush=True)
        out = run(pruned, data, epochs, Practices(unfold_bn=unfold), seed)
        errors.append(100 * (1 - out["top1"]))
        print(f"    top-1 error {errors[-1]:.1f} % in {out['seconds']:.0f}s", flush=True)
    return errors[0], errors[1]


def lasso_measurement(data: Path, epochs: int, strength: float, seed: int) -> dict:
    """Collapsed share and top-1 before / after cutting the collapsed channels."""
    print(f"--- group lasso {strength:g}, {epochs} epochs on the unpruned ResNet-20", flush=True)
    out = run(MODEL, data, epochs, Practices(group_lasso=strength), seed)
    analysis = load_and_analyze(out["result"].model)
    lasso = GroupLasso.of(to_torch(analysis.model), analysis.groups, strength)
    dead = lasso.collapsed_channels()
    by_id = {g.id: g for g in analysis.groups}
    kept = {gid: np.setdiff1d(np.arange(by_id[gid].channels), ch) for gid, ch in dead.items() if ch.size}
    norms = lasso.norms().numpy()
    for gid, first, n in lasso.groups:  # a group keeps one channel at least: its largest
        if gid in kept and not kept[gid].size:
            kept[gid] = np.array([int(np.argmax(norms[first : first + n]))])
    cut = apply_plan(analysis.model, PruningPlan(analysis.groups, kept), analysis.view).model
    feeds, labels = load_test(analysis.model)
    return {
        "collapsed": float(lasso.collapsed().mean()),
        "before": 100 * top1(analysis.model, feeds, labels),
        "after": 100 * top1(cut, feeds, labels),
        "channels": f"{sum(g.channels - len(k) for g, k in ((by_id[i], k) for i, k in kept.items()))} "
        f"of {lasso.channels}",
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="train on the first N/10 images of each class (default all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the --unfold-bn comparison (default 3)")
    parser.add_argument("--lasso", type=float, default=0.5, help="group-lasso strength (default 0.5)")
    parser.add_argument("--lasso-epochs", type=int, default=3, help="epochs of the group-lasso run (default 3)")
    parser.add_argument("--min-gain", type=float, default=2.0, help="points --unfold-bn must gain (default 2)")
    parser.add_argument("--skip-unfold", action="store_true")
    parser.add_argument("--skip-lasso", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    train = extract_train(ARCHIVE, args.cache)
    lines, status = [], 0
    with tempfile.TemporaryDirectory(prefix="onnxprune-training.") as tmp_name:
        tmp = Path(tmp_name)
        data = subset(train, args.images, tmp)
        size = f"{args.images or 50000} images"
        if not args.skip_unfold:
            plain, unfolded = unfold_measurement(data, args.epochs, args.seed, tmp)
            gain = plain - unfolded
            lines.append(
                f"--unfold-bn, ResNet-20 at 50 % MACs (L1), {args.epochs} epochs x {size}: "
                f"error {plain:.1f} % without, {unfolded:.1f} % with ({gain:+.1f} points gained; goal >= "
                f"{args.min_gain:g})"
            )
            status = 0 if gain >= args.min_gain else 1
        if not args.skip_lasso:
            lasso = lasso_measurement(data, args.lasso_epochs, args.lasso, args.seed)
            lines.append(
                f"--group-lasso {args.lasso:g}, {args.lasso_epochs} epochs x {size}: {lasso['collapsed']:.1%} of the "
                f"channels collapsed ({lasso['channels']} cut; goal >= 30 %); top-1 {lasso['before']:.1f} % before "
                f"the cut, {lasso['after']:.1f} % after ({lasso['after'] - lasso['before']:+.2f} points; goal < 0.5)"
            )
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
