"""Scoring time of the effect criteria on ResNet-20: the fast paths beside the one-call-per-channel ones.

What it measures
----------------
The pretrained ResNet-20 of ``../shared/data/cifar10/resnet20.onnx`` scored on ``--calib-samples``
CIFAR-10 training JPEGs (seed 0, preprocessing and extraction as ``benchmarks/criteria.py``),
side by side in one run (ratios matter on a loaded machine; both sides of a row see the same load):

* ``taylor``: the central finite difference, two ONNX Runtime calls per channel and batch
  (``Taylor.per_channel_scores``, what ``--criterion taylor`` did before the torch path) against
  autograd (``criteria.autograd.taylor_scores``: one forward and one backward pass per batch
  through ``onnxprune.torch``). Goals: >= 20x faster, Spearman >= 0.99 per group.
* ``kl`` (and ``head_mask`` with ``--criteria taylor,kl,head_mask``): one call per channel
  (``EffectCriterion.per_channel_scores``) against stacked (``stacked_scores``: several channel
  variants per call along the batch axis, only the nodes after the group's gates re-run). Goals:
  >= 4x faster, the same scores (largest difference <= 1e-5 of the group's largest score).

Printed: one row per comparison (slow s, fast s, speed-up, worst Spearman, worst relative
difference, goal met), the mode each group was scored in, and the machine's load. Written to
``--out`` (default ``benchmarks/out/``) as ``criteria_speed.json``. The exit status is 1 when a
goal is missed.

Usage: ``.venv/bin/python benchmarks/criteria_speed.py [--calib-samples 500] [--criteria taylor,kl,head_mask]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from criteria import ARCHIVE, DEFAULT_CACHE, MODEL, PREPROCESS, extract_train, preamble, source_version  # noqa: E402

from onnxprune.api import load_and_analyze  # noqa: E402
from onnxprune.criteria.autograd import taylor_scores  # noqa: E402
from onnxprune.criteria.base import ScoringContext, get_criterion  # noqa: E402
from onnxprune.measure.calibration import load_calibration  # noqa: E402

#: comparison -> (minimum speed-up, minimum Spearman per group, largest relative difference)
GOALS = {"taylor": (20.0, 0.99, None), "kl": (4.0, None, 1e-5), "head_mask": (4.0, None, 1e-5)}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (1 when both are constant)."""
    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return 1.0 if np.ptp(ra) == np.ptp(rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def timed_scores(analysis, data, score) -> tuple[float, dict, dict]:
    """Wall time, scores and per-group modes of `score(ctx)` on a fresh context."""
    ctx = ScoringContext(analysis.view.consts, analysis.groups, 0, analysis.model, analysis.view, data)
    t0 = time.perf_counter()
    scores = score(ctx)
    seconds = time.perf_counter() - t0
    modes = next((v for k, v in ctx.cache.items() if k.startswith("effect_modes:")), {})
    return seconds, scores, modes


def compare(name: str, analysis, data) -> dict:
    """One row: the slow and the fast path of criterion `name`, timed side by side."""
    criterion = get_criterion(name)
    fast_path = taylor_scores if name == "taylor" else criterion.stacked_scores
    slow_s, slow, _ = timed_scores(analysis, data, criterion.per_channel_scores)
    print(f"  {name}: one call per channel {common.fmt_s(slow_s)}", flush=True)
    fast_s, fast, modes = timed_scores(analysis, data, fast_path)
    modes = modes or dict.fromkeys(fast, "autograd")
    print(f"  {name}: fast path {common.fmt_s(fast_s)}", flush=True)
    worst = min(spearman(fast[g], slow[g]) for g in slow)
    relative = max(float(np.abs(fast[g] - slow[g]).max() / max(np.abs(slow[g]).max(), 1e-30)) for g in slow)
    speedup_goal, spearman_goal, relative_goal = GOALS[name]
    met = slow_s / fast_s >= speedup_goal
    met = met and (spearman_goal is None or worst >= spearman_goal)
    met = met and (relative_goal is None or relative <= relative_goal)
    return {
        "criterion": name,
        "slow_s": slow_s,
        "fast_s": fast_s,
        "speedup": slow_s / fast_s,
        "spearman_min": worst,
        "relative_max": relative,
        "goal": {"speedup": speedup_goal, "spearman": spearman_goal, "relative": relative_goal},
        "met": met,
        "modes": modes,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-samples", type=int, default=500, help="calibration images (default 500)")
    parser.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default 64)")
    parser.add_argument(
        "--criteria", default="taylor,kl", help="comma-separated subset of taylor,kl,head_mask (default taylor,kl)"
    )
    parser.add_argument("--out", type=Path, default=common.REPO / "benchmarks" / "out", help="output folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the JPEG archive is extracted once")
    args = parser.parse_args(argv)
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    unknown = [c for c in args.criteria if c not in GOALS]
    if unknown:
        parser.error(f"unknown criteria {', '.join(unknown)} (known: {', '.join(GOALS)})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not preamble(MODEL, ARCHIVE):
        return 2
    analysis = load_and_analyze(MODEL)
    train = extract_train(ARCHIVE, args.cache)
    data = load_calibration(train, analysis.model, args.calib_samples, PREPROCESS, args.batch_size, seed=0)
    channels = sum(g.channels for g in analysis.groups if g.prunable)
    print(
        f"model {MODEL.name}: {channels} prunable channels; calibration {data.samples} images, batch {data.batch_size}"
    )
    rows = [compare(name, analysis, data) for name in args.criteria]
    load = common.busy_cores()
    headers = ["criterion", "per channel", "fast", "speed-up", "min Spearman", "max rel. diff", "goal met"]
    cells = [
        [
            r["criterion"],
            common.fmt_s(r["slow_s"]),
            common.fmt_s(r["fast_s"]),
            f"{r['speedup']:.1f}x (>= {r['goal']['speedup']:g}x)",
            f"{r['spearman_min']:.4f}",
            f"{r['relative_max']:.1e}",
            "yes" if r["met"] else "NO",
        ]
        for r in rows
    ]
    print()
    print(common.table(headers, cells, title=f"scoring {MODEL.name} on {data.samples} images"))
    for r in rows:
        print(f"{r['criterion']} modes: {sorted(set(r['modes'].values()))}")
    print(f"busy cores at the end: {load}")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"samples": data.samples, "rows": rows, "environment": common.environment(), "busy_cores": load}
    document["source"] = source_version()
    (args.out / "criteria_speed.json").write_text(json.dumps(document, indent=1))
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
