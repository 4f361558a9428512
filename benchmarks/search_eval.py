"""Random search ranked after a cheap recovery (issue 16 item 4): which candidate each
`--search-eval` mode chooses, and how good it is after the same final recovery.

Shared ResNet-56, L1, `--target-flops 0.5`, `--allocate random-search --samples S` (default 8; the
same S candidates in every mode: the seed is fixed), calibration images from the CIFAR-10 JPEG
`train/` folder (labels unused). For each mode (raw, reconstruct, kd-steps:N): prune with the
search, then apply the SAME final recovery to the chosen plan (least-squares reconstruction, ridge
chosen per layer: what `--reconstruct` does, on the same calibration images) and measure top-1 on
`test1000.npz` of the raw pruned model and of the recovered one. The search time is the wall time
of the prune command with the search (scoring and verification included; the search dominates).
Writes benchmarks/out/search_eval.json. No goal: the table is the result.

    python benchmarks/search_eval.py [--samples 8] [--images 500] [--modes raw,reconstruct,kd-steps:50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from allocation import PREPROCESS, SHARED, test_set, top1  # noqa: E402
from common import environment, table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import load_and_analyze  # noqa: E402
from onnxprune.measure.calibration import load_calibration  # noqa: E402
from onnxprune.passes.apply_plan import apply_plan  # noqa: E402
from onnxprune.recover.reconstruct import reconstruct  # noqa: E402
from onnxprune.select.plan import PruningPlan  # noqa: E402

OUT = HERE / "out"
SOURCE = SHARED / "resnet56.onnx"


def final_recovery(analysis, result: onnxprune.PruneResult, data, seed: int, done: dict):
    """The chosen plan applied to the input model and reconstructed (as `--reconstruct` does); a
    plan another mode chose too is reconstructed once (`done`: plan -> reconstruction)."""
    key = json.dumps(result.plan["groups"], sort_keys=True)
    if key not in done:
        done[key] = reconstructed(analysis, result, data, seed)
    return done[key]


def reconstructed(analysis, result: onnxprune.PruneResult, data, seed: int):
    """Reconstruct the plan of `result`, applied afresh to the input model."""
    channels = {g.id: g.channels for g in analysis.groups}
    kept = {g["id"]: np.array(g["kept"]) for g in result.plan["groups"] if len(g["kept"]) < channels[g["id"]]}
    applied = apply_plan(analysis.model, PruningPlan(analysis.groups, kept), analysis.view)
    return reconstruct(analysis.model, applied.model, applied.weights, data, None, seed)


def run(mode: str, args, train: Path, analysis, data, test, done: dict) -> dict:
    """One mode: the search, the chosen candidate, top-1 raw and after the final recovery."""
    start = time.perf_counter()
    result = onnxprune.prune(
        SOURCE,
        criterion="l1",
        target_flops=args.target,
        allocate="random-search",
        samples=args.samples,
        search_eval=mode,
        calib=train,
        calib_samples=args.images,
        preprocess=PREPROCESS,
        seed=args.seed,
    )
    search_s = time.perf_counter() - start
    history = result.report["allocation"]["history"]
    candidates = [h for h in history if "candidate" in h]
    chosen = next(h for h in history if "winner" in h)
    start = time.perf_counter()
    rebuilt = final_recovery(analysis, result, data, args.seed, done)
    recovery_s = time.perf_counter() - start
    print(f"  {mode}: candidate {chosen['winner']} in {search_s:.0f} s", flush=True)
    return {
        "mode": mode,
        "chosen": chosen["winner"],
        "score": chosen["score"],
        "raw_score": chosen["raw_score"],
        "search_s": search_s,
        "candidate_recovery_s": sum(c.get("seconds", 0.0) for c in candidates),
        "macs": result.report["after"]["macs"],
        "top1_pruned": top1(result.model, *test),
        "top1_recovered": top1(rebuilt.model, *test),
        "final_reconstruction": {
            "applied": rebuilt.applied,
            "before": rebuilt.error_before,
            "after": rebuilt.error_after,
        },
        "final_recovery_s": recovery_s,  # 0 when another mode chose the same plan
        "candidates": [{k: v for k, v in c.items() if k != "ratios"} for c in candidates],
    }


HEADERS = ["search-eval", "chosen", "search time", "top-1 pruned", "top-1 after reconstruct", "final error"]


def table_row(r: dict) -> list[str]:
    """One mode's line of the table."""
    final = r["final_reconstruction"]
    return [
        r["mode"],
        f"#{r['chosen']}",
        f"{r['search_s']:.0f} s",
        f"{r['top1_pruned']:.1%}",
        f"{r['top1_recovered']:.1%}",
        f"{final['before']:.3f} -> {final['after']:.3f}",
    ]


def main(argv=None) -> int:
    """Run the modes, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="random-search candidates (default 8)")
    parser.add_argument("--images", type=int, default=500, help="calibration images (default 500)")
    parser.add_argument("--modes", default="raw,reconstruct,kd-steps:50", help="comma-separated --search-eval modes")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs to keep (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    train = extract_train(SHARED / "cifar10-jpg.tar.gz", args.cache)
    test = test_set()
    analysis = load_and_analyze(SOURCE)
    data = load_calibration(train, analysis.model, args.images, PREPROCESS, 64, args.seed)
    print(environment())
    done: dict = {}
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    rows = [run(mode, args, train, analysis, data, test, done) for mode in modes]
    title = (
        f"ResNet-56, L1, {args.target:.0%} FLOPs, random-search over {args.samples} candidates, "
        f"{args.images} calibration images (unpruned {top1(analysis.model, *test):.1%} on test1000)"
    )
    print(table(HEADERS, [table_row(r) for r in rows], title=title))
    OUT.mkdir(parents=True, exist_ok=True)
    settings = {"samples": args.samples, "images": args.images, "target_flops": args.target, "seed": args.seed}
    (OUT / "search_eval.json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=1))
    print("wrote", OUT / "search_eval.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
