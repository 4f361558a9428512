"""Pruning ("compile") speed of onnxprune on a full ResNet-50, against Torch-Pruning.

What it measures
----------------
1. ResNet-50 (base 64, layers 3-4-6-3, 1000 classes, eval mode, input 1x3x224x224), exported
   to ONNX with the TorchScript exporter (BN folded) into a temporary folder:

   * **onnxprune**: wall time of ``onnxprune.prune(path, ratio=0.5)`` (L1, local scope, with
     the masked-reference verification) + ``result.save(out)``, median of ``--repeat`` runs.
     The same runs are split into stages (load, normalize, analysis, scoring, selection,
     rewrite, verification, report, plan, save) by timing the functions that
     ``onnxprune.api.prune`` calls (wrapped at run time; onnxprune is not modified).
     Separately timed as a cross-check: ``onnxprune.api.load_and_analyze(path)`` and
     ``prune(..., verify=False)``. Informational: the same prune + save in fresh interpreters
     (``--no-cold`` skips it), i.e. what one command-line run pays for imports on first use.
   * **Torch-Pruning**: ``tp.pruner.MetaPruner(model, example_inputs,
     importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
     ignored_layers=[model.fc])`` (dependency-graph building) + ``pruner.step()`` on a fresh
     deep copy of the same torch module (copy not timed), median of ``--repeat`` runs.

   The two tools' runs are interleaved (one of each per repetition) so that background load
   hits both alike. The export is not timed (Torch-Pruning does not need one; onnxprune takes
   an existing ONNX file).

2. Scaling: a synthetic deep chain of conv-BN-ReLU blocks (``nn.Sequential``; the first two of
   every 8 blocks are wrapped in a residual Add) of depth D and 4*D, exported to ONNX; median time of
   ``onnxprune.api.load_and_analyze``. Linear growth gives a 4D/D ratio of about 4.

Goals (exit status 1 when missed, unless ``--no-fail``)
-------------------------------------------------------
* onnxprune time / Torch-Pruning time <= 0.5 on ResNet-50;
* load_and_analyze(4D) / load_and_analyze(D) <= 6.

Usage: ``.venv/bin/python benchmarks/compile_speed.py [--repeat 3] [--depth 100] [--no-fail]``.
Torch-Pruning is optional (``pip install torch-pruning``); without it the comparison is
skipped (and counts as missed unless ``--skip-torch-pruning`` or ``--no-fail``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

import onnxprune  # noqa: E402
import onnxprune.api as api  # noqa: E402

RATIO_GOAL = 0.5
SCALING_LIMIT = 6.0

# the functions onnxprune.api.prune calls, in call order, and the stage each one is counted as
STAGES = [
    ("load_model", "load (parse + sha256)"),
    ("normalize", "normalize"),
    ("ModelView", "model view (shapes)"),
    ("find_groups", "channel groups"),
    ("score_groups", "scoring (L1)"),
    ("select", "selection"),
    ("apply_plan", "rewrite (apply_plan)"),
    ("verify_masked", "verification (ORT)"),
    ("model_summary", "report: summaries"),
    ("group_rows", "report: group rows"),
    ("build_report", "report: build"),
    ("plan_document", "plan document"),
]


@contextlib.contextmanager
def stage_timer(acc: dict[str, float]):
    """Wrap the module-level names ``onnxprune.api.prune`` calls so that each call adds its
    wall time to ``acc[stage]``; names missing from this onnxprune version are skipped."""
    saved = {}
    for name, stage in STAGES:
        fn = getattr(api, name, None)
        if fn is None:
            continue
        saved[name] = fn

        def wrapper(*a, __fn=fn, __stage=stage, **k):
            t0 = time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                acc[__stage] += time.perf_counter() - t0

        setattr(api, name, wrapper)
    try:
        yield acc
    finally:
        for name, fn in saved.items():
            setattr(api, name, fn)


def ours_full(path: Path, out: Path, ratio: float, acc: dict[str, float]):
    with stage_timer(acc):
        result = onnxprune.prune(str(path), ratio=ratio)
    t0 = time.perf_counter()
    result.save(out)
    acc["save (model + plan)"] += time.perf_counter() - t0
    return result


COLD_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import onnxprune
t1 = time.perf_counter()
onnxprune.prune(sys.argv[1], ratio=float(sys.argv[3])).save(sys.argv[2])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def cold_process(path: Path, out: Path, ratio: float, repeat: int) -> tuple[float, float]:
    """Median (first prune + save, import onnxprune) seconds in fresh interpreters, as the CLI
    pays them (onnxprune imports ONNX Runtime's shape-inference tools lazily, on first use)."""
    import subprocess

    firsts, imports = [], []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", COLD_SCRIPT, str(path), str(out), str(ratio)],
            capture_output=True,
            text=True,
            check=True,
        )
        imp, first = map(float, done.stdout.split()[-2:])
        imports.append(imp)
        firsts.append(first)
    return statistics.median(firsts), statistics.median(imports)


def tp_prune(tp, model: torch.nn.Module, example: torch.Tensor, ratio: float):
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def bench_resnet50(args, tmp: Path, tp) -> tuple[float | None, bool]:
    print(f"\n== ResNet-50, 1x3x224x224, ratio {args.ratio}, median of {args.repeat} ==")
    model = common.build_resnet50()
    t_export, path = common.timed(lambda: common.export(model, common.RESNET50_INPUT, tmp / "resnet50.onnx"))
    print(f"exported {path.name} ({path.stat().st_size / 2**20:.1f} MiB) in {t_export:.1f} s (not timed below)")
    example = torch.randn(*common.RESNET50_INPUT)

    # warm-up (imports, first-call caches) for both tools, not timed
    onnxprune.prune(str(path), ratio=args.ratio, verify=False)
    if tp is not None:
        tp_prune(tp, copy.deepcopy(model), example, args.ratio)

    full, analyze, noverify, theirs = [], [], [], []
    splits: list[dict[str, float]] = []
    result = None
    for i in range(args.repeat):
        acc: dict[str, float] = defaultdict(float)
        dt, result = common.timed(lambda acc=acc: ours_full(path, tmp / "resnet50.pruned.onnx", args.ratio, acc))
        full.append(dt)
        splits.append(acc)
        analyze.append(common.timed(lambda: api.load_and_analyze(str(path)))[0])
        noverify.append(common.timed(lambda: onnxprune.prune(str(path), ratio=args.ratio, verify=False))[0])
        if tp is not None:
            fresh = copy.deepcopy(model)
            theirs.append(common.timed(lambda fresh=fresh: tp_prune(tp, fresh, example, args.ratio))[0])
            pruned_torch = fresh
        print(
            f"  run {i + 1}: onnxprune {common.fmt_s(full[-1])}"
            + (f", Torch-Pruning {common.fmt_s(theirs[-1])}" if theirs else ""),
            flush=True,
        )

    med = statistics.median
    ours = med(full)
    rows = [
        ["onnxprune prune(verify=True) + save", common.fmt_s(ours), " / ".join(common.fmt_s(s) for s in full)],
        [
            "  of which load_and_analyze (separate runs)",
            common.fmt_s(med(analyze)),
            " / ".join(common.fmt_s(s) for s in analyze),
        ],
        [
            "onnxprune prune(verify=False), no save",
            common.fmt_s(med(noverify)),
            " / ".join(common.fmt_s(s) for s in noverify),
        ],
    ]
    if theirs:
        rows.append(
            [
                "Torch-Pruning MetaPruner() + step()",
                common.fmt_s(med(theirs)),
                " / ".join(common.fmt_s(s) for s in theirs),
            ]
        )
    print()
    print(common.table(["", "median", "runs"], rows))

    # stage split of the median full run (so that the stages add up to its total)
    mid = sorted(range(len(full)), key=full.__getitem__)[len(full) // 2]
    split, total = splits[mid], full[mid]
    stage_rows = []
    for s in [s for _, s in STAGES] + ["save (model + plan)"]:
        if s in split:
            stage_rows.append([s, common.fmt_s(split[s]), f"{100 * split[s] / total:.0f}%"])
    other = max(total - sum(split.values()), 0.0)
    stage_rows.append(["other (glue, dict building)", common.fmt_s(other), f"{100 * other / total:.0f}%"])
    print()
    print(common.table([f"onnxprune stage (run {mid + 1}, {common.fmt_s(total)})", "time", "share"], stage_rows))

    if args.cold:
        cold, imports = cold_process(path, tmp / "cold.onnx", args.ratio, args.repeat)
        print(
            f"\ncold process (fresh interpreter, informational, median of {args.repeat}): "
            f"import onnxprune {common.fmt_s(imports)}, first prune + save {common.fmt_s(cold)} "
            f"(includes the lazy imports onnxprune does on first use)"
        )

    rep = result.report
    print(
        f"\nonnxprune MACs {rep['before']['macs'] / 1e9:.3f} G -> {rep['after']['macs'] / 1e9:.3f} G, "
        f"params {rep['before']['params'] / 1e6:.2f} M -> {rep['after']['params'] / 1e6:.2f} M"
    )
    if theirs:
        try:
            macs, params = tp.utils.count_ops_and_params(pruned_torch, example)
            print(f"Torch-Pruning result: MACs {macs / 1e9:.3f} G, params {params / 1e6:.2f} M")
        except Exception as exc:  # informational only
            print(f"Torch-Pruning result: (count_ops_and_params failed: {exc})")

    if not theirs:
        print("\nTorch-Pruning not measured: no comparison")
        return None, args.skip_torch_pruning
    ratio = ours / med(theirs)
    ok = ratio <= RATIO_GOAL
    print(
        f"\nonnxprune / Torch-Pruning = {common.fmt_s(ours)} / {common.fmt_s(med(theirs))} = {ratio:.2f}x "
        f"(goal <= {RATIO_GOAL}x): {'MET' if ok else 'MISSED'}"
    )
    return ratio, ok


def bench_scaling(args, tmp: Path) -> tuple[float, bool]:
    d = args.depth
    print(f"\n== load_and_analyze scaling: conv-BN-ReLU chain, depth {d} vs {4 * d}, median of {args.repeat} ==")
    rows, times = [], {}
    for depth in (d, 4 * d):
        model = common.deep_chain(depth)
        path = common.export(model, (1, 3, 16, 16), tmp / f"chain{depth}.onnx")
        import onnx

        nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
        api.load_and_analyze(str(path))  # warm-up
        t, samples = common.median_time(lambda path=path: api.load_and_analyze(str(path)), args.repeat)
        groups = api.load_and_analyze(str(path)).groups
        times[depth] = t
        rows.append(
            [
                f"depth {depth}",
                nodes,
                len(groups),
                sum(g.prunable for g in groups),
                common.fmt_s(t),
                " / ".join(common.fmt_s(s) for s in samples),
            ]
        )
    print(common.table(["model", "nodes", "groups", "prunable", "median", "runs"], rows))
    ratio = times[4 * d] / times[d]
    ok = ratio <= SCALING_LIMIT
    print(
        f"\nload_and_analyze time ratio depth {4 * d} / depth {d} = {ratio:.2f} "
        f"(linear = 4, limit {SCALING_LIMIT}): {'MET' if ok else 'MISSED'}"
    )
    return ratio, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Goals: onnxprune <= 0.5x Torch-Pruning time on ResNet-50; analysis time at depth 4D <= 6x depth D.",
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio for both tools (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--depth", type=int, default=100, help="D for the scaling test (default 100)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU (default 0)",
    )
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when a goal is missed")
    parser.add_argument(
        "--skip-torch-pruning", action="store_true", help="do not run Torch-Pruning (its goal is then not checked)"
    )
    parser.add_argument(
        "--no-cold",
        dest="cold",
        action="store_false",
        help="skip the fresh-interpreter (cold process) measurement of onnxprune",
    )
    parser.add_argument("--skip-scaling", action="store_true", help="skip the deep-chain scaling test")
    args = parser.parse_args(argv)

    print(common.environment())
    print(common.wait_for_idle(args.wait_idle))
    tp = None
    if not args.skip_torch_pruning:
        try:
            from importlib.metadata import version

            import torch_pruning as tp

            print(f"torch-pruning {version('torch-pruning')}")
        except ImportError:
            print("torch_pruning is not installed (pip install torch-pruning): comparison skipped")

    ok = True
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as d:
        tmp = Path(d)
        _, ok_speed = bench_resnet50(args, tmp, tp)
        ok &= ok_speed
        if not args.skip_scaling:
            _, ok_scale = bench_scaling(args, tmp)
            ok &= ok_scale
    print(f"\nafter the run, {common.wait_for_idle(0)}")
    skipped = " (Torch-Pruning comparison skipped)" if tp is None else ""
    print(f"result: {'all checked goals met' if ok else 'goal(s) missed'}{skipped}")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
