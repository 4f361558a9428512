"""Pruning an LLM-sized model: peak memory bounded by the output, time linear in the size.

Goal (issue 15): `onnxprune model.onnx --ratio 0.5 -o out.onnx` on a Llama-architecture decoder
(benchmarks/llm_graph.py: random float32 weights in one external data file) peaks at most at
1.3 x the output's size + 0.5 GB of resident memory, and its seconds per GB do not grow with the
size. Two sizes are generated into a temporary folder (a small one and one about twice as large;
`--big`: hidden 2048 x 16 layers, ~3 GB, as the larger), each pruned in a child process whose peak
RSS is the kernel's high-water mark (os.wait4's ru_maxrss).

    python benchmarks/llm_scale.py [--big] [--ratio 0.5] [--keep DIR]

Exits 1 when a run fails, its peak RSS exceeds the limit, or the seconds per GB of the larger
size exceed 1.5 x those of the smaller.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_graph import LlamaSpec, write_llama  # noqa: E402  (benchmarks/ is not a package)
from memory import peak_rss  # noqa: E402

GB = 1e9
RSS_FACTOR, RSS_EXTRA = 1.3, 0.5  # limit: 1.3 x output GB + 0.5 GB
TIME_GROWTH = 1.5

SIZES = {
    "small": LlamaSpec(hidden=1024, layers=8),  # ~0.43 GB
    "double": LlamaSpec(hidden=1024, layers=16),  # ~0.79 GB
    "big": LlamaSpec(hidden=2048, layers=16, heads=32, kv_heads=8),  # ~3.0 GB
}


def run_size(folder: Path, name: str, spec: LlamaSpec, ratio: float) -> dict:
    """Generate one size, prune it in a child process; its row of the table."""
    model = folder / f"{name}.onnx"
    started = time.perf_counter()
    write_llama(model, spec)
    generated = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.glob(f"{name}.onnx*"))
    output = folder / f"{name}.pruned.onnx"
    command = [sys.executable, "-m", "onnxprune", str(model), "--ratio", str(ratio), "-o", str(output)]
    code, rss, seconds, tail = peak_rss(command)
    out_size = sum(p.stat().st_size for p in folder.glob(f"{name}.pruned.onnx*"))
    for path in folder.glob(f"{name}.*onnx*"):  # the next size gets the disk space
        path.unlink()
    return {
        "name": name,
        "spec": spec,
        "in": size / GB,
        "out": out_size / GB,
        "rss": rss / GB,
        "limit": RSS_FACTOR * out_size / GB + RSS_EXTRA,
        "seconds": seconds,
        "per_gb": seconds / (size / GB),
        "generated": generated,
        "code": code,
        "tail": tail,
    }


def print_table(rows: list[dict]) -> None:
    """The table: sizes, peak RSS against its limit, seconds and seconds per input GB."""
    print(f"{'model':<8} {'in GB':>6} {'out GB':>7} {'peak RSS GB':>12} {'limit GB':>9} {'seconds':>8} {'s/GB':>6}")
    for r in rows:
        print(
            f"{r['name']:<8} {r['in']:6.2f} {r['out']:7.2f} {r['rss']:12.2f} {r['limit']:9.2f} "
            f"{r['seconds']:8.1f} {r['per_gb']:6.1f}"
        )


def verdict(rows: list[dict]) -> list[str]:
    """The goals missed (empty: all met)."""
    missed = []
    for r in rows:
        if r["code"] != 0:
            missed.append(f"{r['name']}: onnxprune exited {r['code']}: {r['tail'].strip()[-600:]}")
        elif r["rss"] > r["limit"]:
            missed.append(f"{r['name']}: peak RSS {r['rss']:.2f} GB > limit {r['limit']:.2f} GB")
    small, large = rows[0], rows[-1]
    if large["per_gb"] > TIME_GROWTH * small["per_gb"]:
        missed.append(
            f"time per GB grew {large['per_gb'] / small['per_gb']:.2f}x from {small['name']} to "
            f"{large['name']} (goal: at most {TIME_GROWTH}x)"
        )
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--big", action="store_true", help="the larger size is the ~3 GB model (hidden 2048, 16 layers)"
    )
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR (files are removed after each size)")
    args = parser.parse_args()
    names = ["small", "big"] if args.big else ["small", "double"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-llm-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            spec = SIZES[name]
            sizes = f"hidden {spec.hidden}, {spec.layers} layers, ffn {spec.ffn}, vocab {spec.vocab}, seq {spec.seq}"
            print(f"{name}: {sizes}", flush=True)
            row = run_size(folder, name, spec, args.ratio)
            print(
                f"  generated {row['in']:.2f} GB in {row['generated']:.0f}s, pruned in {row['seconds']:.0f}s",
                flush=True,
            )
            rows.append(row)
    print_table(rows)
    missed = verdict(rows)
    for line in missed:
        print(f"MISSED: {line}")
    if not missed:
        print(f"goals met: peak RSS <= {RSS_FACTOR} x output + {RSS_EXTRA} GB; time per GB within {TIME_GROWTH}x")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
