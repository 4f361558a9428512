"""`--target-latency` with real timing: each strategy prunes the shared ResNet-56 to a fraction of
its measured ONNX Runtime CPU latency (batch 1); then the unpruned and the pruned model are timed
side by side (interleaved blocks, sessions that do not spin, as the strategies time them) and the
measured ratio is compared with the asked one. The unit tests check the strategies' bisection
against a noiseless MACs clock (tests/test_allocation.py); this script checks that what the
strategy measured holds afterwards.

Fails (exit 1) when a strategy's own measurement exceeds the target, or when the side-by-side
ratio exceeds the asked fraction by more than --slack (timing noise on a shared machine).

    python benchmarks/latency_target.py [--fraction 0.6] [--slack 0.15] [--strategies uniform,global]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from allocation import PREPROCESS, SHARED  # noqa: E402
from common import table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.bench.latency import interleaved, make_session  # noqa: E402
from onnxprune.model.inputs import random_inputs  # noqa: E402


def run(strategy: str, model: onnx.ModelProto, goal_ms: float, train: Path, args) -> dict:
    """Prune to `goal_ms` with one strategy; time both models side by side."""
    start = time.perf_counter()
    result = onnxprune.prune(
        SHARED / "resnet56.onnx",
        allocate=strategy,
        target_latency=f"{goal_ms:.6f}",
        calib=train,
        calib_samples=args.calib_samples,
        preprocess=PREPROCESS,
        samples=args.samples,
        seed=0,
    )
    seconds = time.perf_counter() - start
    target = result.report["allocation"]["target"]
    feeds = random_inputs(model, batch=1)
    sessions = [make_session(m, spin=False) for m in (model, result.model)]  # as the meter times
    before, after = (float(np.median(s)) for s in interleaved(sessions, feeds, warmup=10, iters=200))
    return {
        "strategy": strategy,
        "target_ms": target["target"],
        "achieved_ms": target["achieved"],
        "macs_kept": result.report["after"]["macs"] / result.report["before"]["macs"],
        "measured_ratio": after / before,
        "seconds": seconds,
    }


def reference_ms(model: onnx.ModelProto) -> float:
    """The unpruned model's median latency (batch 1) timed as the strategies' meter times it (a
    session that does not spin), so that the target and the meter's readings are on one clock."""
    session = make_session(model, spin=False)
    return 1000.0 * float(np.median(interleaved([session], random_inputs(model, batch=1), 10, 200)[0]))


def fmt(value) -> str:
    """A table cell."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
    """Print the table; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.6, help="latency to keep, of the unpruned model's")
    parser.add_argument("--slack", type=float, default=0.15, help="allowed excess of the side-by-side ratio")
    parser.add_argument("--strategies", default="uniform,global,sensitivity,random-search")
    parser.add_argument("--samples", type=int, default=8, help="random-search candidates")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    train = extract_train(SHARED / "cifar10-jpg.tar.gz", args.cache)
    model = onnx.load(SHARED / "resnet56.onnx")
    baseline = reference_ms(model)
    goal = args.fraction * baseline
    print(f"unpruned ResNet-56: {baseline:.3f} ms (batch 1); target {goal:.3f} ms")
    rows = [run(s, model, goal, train, args) for s in args.strategies.split(",")]
    print(table(list(rows[0]), [[fmt(v) for v in r.values()] for r in rows], "--target-latency, measured side by side"))
    missed = [
        r["strategy"]
        for r in rows
        if r["achieved_ms"] > r["target_ms"] or r["measured_ratio"] > args.fraction * (1 + args.slack)
    ]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
