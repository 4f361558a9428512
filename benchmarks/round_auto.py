"""``--round-to auto`` against ``--round-to 1`` on MobileNetV2: is hardware-aware rounding ever slower?

What it measures
----------------
MobileNetV2 (width 1.0, 1000 classes, 224x224, TorchScript export, BN folded) is pruned at
``--ratio`` twice: ``round_to=1`` (exactly the ratio's counts) and ``round_to="auto"`` (each
pruned group's count chosen by timing its layers on the same execution provider, see
``onnxprune/rounding.py``; the layer timings go to a fresh temporary cache unless ``--keep-cache``).
The unpruned, the round-to-1 and the auto model are then timed side by side by
``onnxprune.bench.bench_models`` (interleaved blocks, ABBA) at every ``--batch``.

Goals, at every batch size: auto is not slower than round-to-1 (median auto <= median round-1 x
(1 + ``--tolerance``), the tolerance covering the timing noise between two medians), and auto is
faster than the unpruned model. Exit status 1 when missed (unless ``--no-fail``).

The layer timings of ``--round-to auto`` use ONNX Runtime's default threads (all cores).

Usage: ``.venv/bin/python benchmarks/round_auto.py [--ratio 0.5] [--batch 1,8] [--iters 100]
[--threads N] [--no-spin]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.bench import BenchOptions, bench_models  # noqa: E402


def parse_args(argv):
    """The command-line options (batch sizes parsed)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    parser.add_argument("--ep", default="cpu", choices=("cpu", "cuda", "tensorrt"), help="execution provider")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--iters", type=int, default=100, help="timed runs per model and batch (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model and batch (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default 0: all cores)")
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="idle ORT workers sleep instead of spin-waiting (steadier on a shared machine)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="auto may be this much slower than round-to-1 (timing noise; default 0.02)",
    )
    parser.add_argument("--keep-cache", action="store_true", help="use the user's timing cache, not a fresh one")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU (default 0)",
    )
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when a goal is missed")
    args = parser.parse_args(argv)
    args.batches = tuple(int(b) for b in args.batch.split(",") if b.strip())
    return args


def prune_both(path: Path, folder: Path, args) -> tuple[Path, Path, dict]:
    """The round-to-1 and auto models, and the auto run's rounding report."""
    exact = onnxprune.prune(str(path), ratio=args.ratio).save(folder / "mobilenetv2.round1.onnx")
    t_auto, auto = common.timed(lambda: onnxprune.prune(str(path), ratio=args.ratio, round_to="auto", round_ep=args.ep))
    auto.report["rounding"]["seconds"] = t_auto
    return exact, auto.save(folder / "mobilenetv2.auto.onnx"), auto.report["rounding"]


def main(argv=None) -> int:
    """Run the benchmark; the exit status says whether the goal was met."""
    args = parse_args(argv)
    print(common.environment())
    print(common.wait_for_idle(args.wait_idle))
    with tempfile.TemporaryDirectory(prefix="onnxprune-round-") as tmp:
        folder = Path(tmp)
        if not args.keep_cache:
            os.environ["ONNXPRUNE_CACHE"] = str(folder / "cache")
        base = common.export(common.build_mobilenet_v2(), (1, 3, 224, 224), folder / "mobilenetv2.onnx")
        exact, auto, rounding = prune_both(base, folder, args)
        changed = [g for g in rounding["groups"] if g["chosen"] != g["requested"]]
        print(
            f"--round-to auto: {rounding['layers_timed']} single-op models timed in {rounding['seconds']:.1f} s; "
            f"{len(changed)} of {len(rounding['groups'])} groups rounded up: "
            + ", ".join(f"{g['id']} {g['requested']}->{g['chosen']}" for g in changed)
        )
        options = BenchOptions(
            ep=args.ep,
            batches=args.batches,
            threads=args.threads,
            warmup=args.warmup,
            iters=args.iters,
            spin=not args.no_spin,
        )
        doc = bench_models([base, exact, auto], options).to_dict()
    rows, ok = [], True
    macs = [m["macs"] for m in doc["models"]]
    for batch in args.batches:
        base_row, exact_row, auto_row = [r for r in doc["results"] if r["batch"] == batch]
        versus_exact = auto_row["median_ms"] / exact_row["median_ms"]
        ok &= versus_exact <= 1 + args.tolerance and auto_row["speedup"] > 1
        rows.append(
            [
                f"batch {batch}",
                f"{base_row['median_ms']:.2f}",
                f"{exact_row['median_ms']:.2f}",
                f"{auto_row['median_ms']:.2f}",
                f"{exact_row['speedup']:.2f}x",
                f"{auto_row['speedup']:.2f}x",
                f"{versus_exact:.3f}",
            ]
        )
    print()
    print(
        common.table(
            ["", "unpruned ms", "round-to 1 ms", "auto ms", "speedup r1", "speedup auto", "auto / round-to 1"],
            rows,
            title=f"MobileNetV2 224x224, ratio {args.ratio}, {doc['provider']}, median of {args.iters}; "
            f"MACs {macs[0] / 1e6:.0f}M / {macs[1] / 1e6:.1f}M / {macs[2] / 1e6:.1f}M",
        )
    )
    print(f"\nafter the run, {common.wait_for_idle(0)}")
    print(
        f"goal: auto <= round-to-1 x {1 + args.tolerance:g} and faster than unpruned at every batch: "
        f"{'MET' if ok else 'MISSED'}"
    )
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
