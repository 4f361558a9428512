"""ONNX Runtime CPU latency of ResNet-50 before and after onnxprune, against the MACs saved.

What it measures
----------------
ResNet-50 (base 64, layers 3-4-6-3, 1000 classes, eval mode, 224x224) is exported to ONNX
(TorchScript exporter, BN folded, dynamic batch) and pruned with
``onnxprune.prune(path, ratio=--ratio)`` (L1, local scope, verified). Both models are run by
ONNX Runtime's CPU execution provider with all graph optimizations
(``ORT_ENABLE_ALL``), ``intra_op_num_threads`` = number of CPU cores, sequential execution,
one session each. For every batch size in ``--batch``: ``--warmup`` runs of each, then
``--iters`` timed runs of each, **interleaved by blocks** of ``--block`` runs (A B B A A B ...,
the first run after each switch untimed) so that background load and frequency drift hit both
models alike; the median latency of each is reported (p10/p90 too).
The goal uses the medians; the same quotient computed from the fastest run of each
("from min") is printed as a less load-sensitive cross-check.

Printed: MACs before/after (from ``result.report``), the latency speedup
(median before / median after), the MACs reduction (MACs before / MACs after) and their
quotient, the *efficiency* = speedup / MACs reduction (1.0 = latency falls exactly as much as
the MACs).

Goal: efficiency >= 0.9 at every measured batch size; exit status 1 when missed (unless
``--no-fail``).

Usage: ``.venv/bin/python benchmarks/latency.py [--ratio 0.5] [--iters 50] [--batch 1,8]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402
import onnxprune.bench  # noqa: E402

GOAL = 0.9


def session(path: Path, threads: int, spin: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not spin:  # idle worker threads sleep instead of spin-waiting (helps on a busy machine)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(
    sessions: list[ort.InferenceSession], feed: np.ndarray, warmup: int, iters: int, block: int = 10
) -> list[list[float]]:
    """`onnxprune.bench.interleaved` with the model's single input."""
    return onnxprune.bench.interleaved(sessions, {sessions[0].get_inputs()[0].name: feed}, warmup, iters, block)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Goal: latency speedup / MACs reduction >= {GOAL} at every batch size.",
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    parser.add_argument("--iters", type=int, default=50, help="timed runs per model and batch size (default 50)")
    parser.add_argument(
        "--block", type=int, default=10, help="consecutive timed runs of one model before switching (default 10)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per model and batch size (default 5)")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads (default: number of CPU cores)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU (default 0)",
    )
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="disable ORT's intra-op thread spinning (less sensitive to other processes)",
    )
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when the goal is missed")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]

    print(common.environment())
    print(common.wait_for_idle(args.wait_idle))
    print(
        f"ORT CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads={args.threads}"
        f"{', no spinning' if args.no_spin else ''}, "
        f"{args.warmup} warm-up + {args.iters} timed runs per model and batch, interleaved in blocks of {args.block}"
    )

    with tempfile.TemporaryDirectory(prefix="onnxprune-latency-") as d:
        tmp = Path(d)
        model = common.build_resnet50()
        t_export, base_path = common.timed(lambda: common.export(model, common.RESNET50_INPUT, tmp / "resnet50.onnx"))
        t_prune, result = common.timed(lambda: onnxprune.prune(str(base_path), ratio=args.ratio))
        pruned_path = result.save(tmp / "resnet50.pruned.onnx")
        print(
            f"export {t_export:.1f} s, prune(ratio={args.ratio}) {t_prune:.1f} s, "
            f"verification: {'ok' if result.report.get('verification', {}).get('ok') else 'n/a'}"
        )

        rep = result.report
        macs_before, macs_after = rep["before"]["macs"], rep["after"]["macs"]
        params_before, params_after = rep["before"]["params"], rep["after"]["params"]
        macs_reduction = macs_before / macs_after
        print()
        print(
            common.table(
                ["", "before", "after", "before/after"],
                [
                    [
                        "MACs (batch 1)",
                        f"{macs_before / 1e9:.3f} G",
                        f"{macs_after / 1e9:.3f} G",
                        f"{macs_reduction:.2f}x",
                    ],
                    [
                        "params",
                        f"{params_before / 1e6:.2f} M",
                        f"{params_after / 1e6:.2f} M",
                        f"{params_before / params_after:.2f}x",
                    ],
                    [
                        "file size",
                        f"{base_path.stat().st_size / 2**20:.1f} MiB",
                        f"{pruned_path.stat().st_size / 2**20:.1f} MiB",
                        f"{base_path.stat().st_size / pruned_path.stat().st_size:.2f}x",
                    ],
                ],
            )
        )

        sessions = [
            session(base_path, args.threads, not args.no_spin),
            session(pruned_path, args.threads, not args.no_spin),
        ]
        rng = np.random.default_rng(0)
        rows, ok = [], True
        for b in batches:
            feed = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
            before, after = interleaved(sessions, feed, args.warmup, args.iters, args.block)
            mb, ma = statistics.median(before), statistics.median(after)
            speedup = mb / ma
            efficiency = speedup / macs_reduction
            ok &= efficiency >= GOAL
            gmacs_s = (macs_before * b / mb / 1e9, macs_after * b / ma / 1e9)
            rows.append(
                [
                    f"batch {b}",
                    f"{mb * 1e3:.1f} ({pct(before, 10) * 1e3:.1f}-{pct(before, 90) * 1e3:.1f})",
                    f"{ma * 1e3:.1f} ({pct(after, 10) * 1e3:.1f}-{pct(after, 90) * 1e3:.1f})",
                    f"{speedup:.2f}x",
                    f"{macs_reduction:.2f}x",
                    f"{efficiency:.2f}",
                    f"{min(before) / min(after) / macs_reduction:.2f}",
                    f"{gmacs_s[0]:.0f} / {gmacs_s[1]:.0f}",
                ]
            )
            print(f"  batch {b}: done", flush=True)
        print()
        print(
            common.table(
                [
                    "",
                    "before ms (p10-p90)",
                    "after ms (p10-p90)",
                    "speedup",
                    "MACs red.",
                    "speedup/MACs red.",
                    "same, from min",
                    "GMAC/s bef/aft",
                ],
                rows,
                title=f"ResNet-50 224x224, ratio {args.ratio}, median latency",
            )
        )
    print(f"\nafter the run, {common.wait_for_idle(0)}")
    print(f"goal: speedup / MACs reduction >= {GOAL} at every batch size: {'MET' if ok else 'MISSED'}")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
