"""`make demo`: prune the bundled digits CNN and show what it costs and what it buys.

The model (`digits_cnn.onnx`) was trained by `train.py` on scikit-learn's 8x8 handwritten digits.
This script analyzes it, prunes it with the L1 criterion, verifies the pruned model against the
masked reference, recovers accuracy by least-squares reconstruction on the training digits, and
prints MACs/parameters, ONNX Runtime CPU latency and held-out accuracy, before and after.
Options: --ratio, --criterion, --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import load_digits_split  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.bench import compare_latency  # noqa: E402
from onnxprune.model.runtime import run_model  # noqa: E402
from onnxprune.report.console import print_analysis, print_report, stdout  # noqa: E402
from onnxprune.report.document import group_rows, prunable_share  # noqa: E402


def accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy with ONNX Runtime."""
    logits = run_model(model, {"input": images}, optimize=True)["logits"]
    return float(np.mean(logits.argmax(axis=1) == labels))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--out", default=str(HERE.parents[1] / "build" / "demo"))
    args = parser.parse_args()

    source = HERE / "digits_cnn.onnx"
    analysis = onnxprune.api.load_and_analyze(source)
    print_analysis(
        group_rows(analysis.groups, analysis.view), prunable_share(analysis.groups, analysis.view), source.name
    )

    x_train, y_train, x_test, y_test = load_digits_split()
    calib = Path(args.out) / "calibration.npz"
    calib.parent.mkdir(parents=True, exist_ok=True)
    np.savez(calib, input=x_train, y=y_train)
    plain = onnxprune.prune(source, criterion=args.criterion, ratio=args.ratio)
    result = onnxprune.prune(
        source, criterion=args.criterion, ratio=args.ratio, calib=calib, calib_samples=len(x_train), reconstruct=True
    )
    output = Path(args.out) / "digits_cnn.pruned.onnx"
    result.save(output)
    stdout.print()
    print_report(result.report, str(output), str(onnxprune.api.default_plan_path(output)))

    original = onnx.load(source)
    feeds = {"input": np.ascontiguousarray(x_test[:64])}
    before, after = compare_latency([original, result.model], feeds, warmup=10, iters=100)
    stdout.print()
    stdout.print(
        f"ONNX Runtime CPU latency, batch {before.batch}: {before.median_ms:.3f} ms → "
        f"{after.median_ms:.3f} ms  (speedup {before.median_ms / after.median_ms:.2f}×, "
        f"MACs reduction {1 / result.report['macs_ratio']:.2f}×)"
    )
    stdout.print(
        f"held-out accuracy ({len(y_test)} digits): {accuracy(original, x_test, y_test):.1%} → "
        f"{accuracy(plain.model, x_test, y_test):.1%} pruned → "
        f"{accuracy(result.model, x_test, y_test):.1%} after least-squares reconstruction "
        f"on the {len(x_train)} training digits (no fine-tuning)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
