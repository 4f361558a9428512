"""Least-squares reconstruction alone (no training) on the shared ResNet-56.

Prunes with L1 to a FLOPs target (default 50 %) and at a plain ratio (default 0.3), then reports
top-1 on `test1000.npz` before and after `--reconstruct` (calibration: images from the CIFAR-10
JPEG `train/` folder, extracted once outside the repository), the held-out output error and the
time. Issue 6 asks for these numbers; there is no goal to fail on.

    python benchmarks/reconstruct.py [--target 0.5] [--ratio 0.3] [--calib-samples 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from allocation import PREPROCESS, SHARED, test_set, top1  # noqa: E402
from common import table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402

import onnxprune  # noqa: E402


def run(label: str, options: dict, args, train: Path, images, labels) -> list:
    """Prune without and with reconstruction; one table row."""
    common = dict(criterion="l1", calib=train, calib_samples=args.calib_samples, preprocess=PREPROCESS, **options)
    plain = onnxprune.prune(SHARED / "resnet56.onnx", **common)
    start = time.perf_counter()
    rebuilt = onnxprune.prune(SHARED / "resnet56.onnx", reconstruct=True, **common)
    seconds = time.perf_counter() - start
    recon = rebuilt.report["reconstruction"]
    return [
        label,
        f"{plain.report['after']['macs'] / 1e6:.1f} M",
        f"{top1(plain.model, images, labels):.1%}",
        f"{top1(rebuilt.model, images, labels):.1%}",
        f"{recon['output_error_before']:.2f} → {recon['output_error_after']:.2f}",
        f"{seconds:.0f} s",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="FLOPs fraction to keep")
    parser.add_argument("--ratio", type=float, default=0.3, help="plain ratio of channels to prune")
    parser.add_argument("--calib-samples", type=int, default=500)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    train = extract_train(SHARED / "cifar10-jpg.tar.gz", args.cache)
    images, labels = test_set()
    rows = [
        run(f"--target-flops {args.target}", {"target_flops": args.target}, args, train, images, labels),
        run(f"--ratio {args.ratio}", {"ratio": args.ratio}, args, train, images, labels),
    ]
    print(
        table(
            ["setting", "MACs", "top-1 pruned", "top-1 reconstructed", "held-out output error", "time"],
            rows,
            title="ResNet-56 (92.6 % unpruned), L1, least-squares reconstruction, no training",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
