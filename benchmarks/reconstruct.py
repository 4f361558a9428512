"""Least-squares reconstruction alone (no training) on the shared ResNet-56, against issue 16's goals.

Prunes with L1 at `--ratio 0.5` (256 calibration images) and to `--target-flops 0.5` (500 images),
then reports top-1 on `test1000.npz` before and after `--reconstruct` (calibration: images from the
CIFAR-10 JPEG `train/` folder, extracted once outside the repository), the held-out output error,
the layers kept as pruned (their refit did not lower their held-out error), the λ chosen per layer
and the time. Goals (issue 16): ≥ 35 % top-1 at `--ratio 0.5` with 256 images, ≥ 80 % at
`--target-flops 0.5` with 500 images; exits 1 when one is missed.

    python benchmarks/reconstruct.py [--only ratio|flops] [--ridge auto|L]

`rows()` returns the measured rows (dicts) for other benchmarks (benchmarks/recover.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from allocation import PREPROCESS, SHARED, test_set, top1  # noqa: E402
from common import table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402

import onnxprune  # noqa: E402


@dataclass(frozen=True)
class Goal:
    """One benchmark row: a pruning setting, its calibration images and the top-1 to reach."""

    key: str
    setting: str
    options: dict
    samples: int
    top1: float


GOALS = (
    Goal("ratio", "--ratio 0.5", {"ratio": 0.5}, 256, 0.35),
    Goal("flops", "--target-flops 0.5", {"target_flops": 0.5}, 500, 0.80),
)


def measure(goal: Goal, train: Path, images, labels, ridge: float | None = None) -> dict:
    """Prune without and with reconstruction for one goal; its row (top-1 as fractions)."""
    common = dict(criterion="l1", calib=train, calib_samples=goal.samples, preprocess=PREPROCESS, **goal.options)
    start = time.perf_counter()
    plain = onnxprune.prune(SHARED / "resnet56.onnx", **common)
    prune_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuilt = onnxprune.prune(SHARED / "resnet56.onnx", reconstruct=True, ridge=ridge, **common)
    seconds = time.perf_counter() - start
    recon = rebuilt.report["reconstruction"]
    ridges = sorted(c["ridge"] for c in recon.get("per_layer", []))
    reached = top1(rebuilt.model, images, labels)
    return {
        "setting": goal.setting,
        "samples": goal.samples,
        "macs": plain.report["after"]["macs"],
        "top1_plain": top1(plain.model, images, labels),
        "top1_reconstructed": reached,
        "output_error_before": recon["output_error_before"],
        "output_error_after": recon["output_error_after"],
        "applied": recon["applied"],
        "layers": recon["layers"],
        "layers_kept_as_pruned": recon.get("layers_kept_as_pruned", 0),
        "ridge_range": (ridges[0], ridges[-1]) if ridges else None,
        "seconds_prune": prune_seconds,
        "seconds_reconstruct": seconds,
        "goal": goal.top1,
        "ok": reached >= goal.top1,
    }


def rows(keys=("ratio", "flops"), cache: Path = DEFAULT_CACHE, ridge: float | None = None) -> list[dict]:
    """The measured rows of the goals named by `keys` (see `measure`)."""
    train = extract_train(SHARED / "cifar10-jpg.tar.gz", cache)
    images, labels = test_set()
    return [measure(goal, train, images, labels, ridge) for goal in GOALS if goal.key in keys]


def _cells(row: dict) -> list:
    low, high = row["ridge_range"] or (float("nan"), float("nan"))
    return [
        row["setting"],
        row["samples"],
        f"{row['macs'] / 1e6:.1f} M",
        f"{row['top1_plain']:.1%}",
        f"{row['top1_reconstructed']:.1%}",
        f"{row['output_error_before']:.2f} → {row['output_error_after']:.2f}",
        f"{row['layers']} / {row['layers_kept_as_pruned']}",
        f"{low:g}…{high:g}",
        f"{row['seconds_reconstruct']:.0f} s",
        f"≥ {row['goal']:.0%} {'ok' if row['ok'] else 'MISSED'}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[g.key for g in GOALS], help="one row only")
    parser.add_argument("--ridge", default="auto", help="'auto' (per layer, default) or one λ for every layer")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    ridge = None if args.ridge == "auto" else float(args.ridge)
    measured = rows((args.only,) if args.only else ("ratio", "flops"), args.cache, ridge)
    header = ["setting", "images", "MACs", "top-1 pruned", "top-1 reconstructed", "held-out output error"]
    header += ["refitted / kept", "λ chosen", "time", "goal"]
    print(table(header, [_cells(r) for r in measured], title="ResNet-56 (92.6 % unpruned), L1, least squares"))
    return 0 if all(r["ok"] for r in measured) else 1


if __name__ == "__main__":
    raise SystemExit(main())
