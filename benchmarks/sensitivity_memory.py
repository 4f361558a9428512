"""Peak memory of `onnxprune sensitivity` on the shared ResNet-56 with 2,000 calibration images.

Goal (issue 4): the peak resident memory of the whole process tree (the command and its --jobs
workers, summed) stays under 2 GB. The calibration images come from the CIFAR-10 JPEG `train/`
folder, extracted once outside the repository (see criteria.py). Memory does not depend on the
number of ratios (batches are streamed and every ratio reuses the same batch), so `--ratios 0.5`
measures the same peak in a ninth of the time; the default runs the full 0.1…0.9 sweep.

    python benchmarks/sensitivity_memory.py [--samples 2000] [--ratios 0.1,...] [--jobs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import table  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data" / "cifar10"
PREPROCESS = "scale=255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_and_sample(command: list[str], interval: float = 0.05) -> tuple[int, float, int]:
    """Run a command, sampling its process tree's RSS; returns (peak bytes, seconds, exit code)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(interval)
    return peak, time.perf_counter() - start, process.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--limit-gb", type=float, default=2.0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when the goal is missed")
    args = parser.parse_args(argv)

    train = extract_train(SHARED / "cifar10-jpg.tar.gz", args.cache)
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "onnxprune",
            "sensitivity",
            str(SHARED / "resnet56.onnx"),
            "--calib",
            str(train),
            "--calib-samples",
            str(args.samples),
            "--preprocess",
            PREPROCESS,
            "--ratios",
            args.ratios,
            "--jobs",
            str(args.jobs),
            "--json",
            os.path.join(out, "s.json"),
            "--plot",
            os.path.join(out, "s.png"),
        ]
        peak, seconds, code = run_and_sample(command)
    if code != 0:
        print(f"sensitivity failed with exit code {code}")
        return code
    peak_gb = peak / 1e9
    print(
        table(
            ["model", "images", "ratios", "jobs", "wall time", "peak RSS (tree)"],
            [
                [
                    "resnet56",
                    args.samples,
                    len(args.ratios.split(",")),
                    args.jobs,
                    f"{seconds:.0f} s",
                    f"{peak_gb:.2f} GB",
                ]
            ],
            title="onnxprune sensitivity, peak memory",
        )
    )
    met = peak_gb < args.limit_gb
    print(f"goal: peak < {args.limit_gb} GB: {'MET' if met else 'MISSED'}")
    return 0 if met or args.no_fail else 1


if __name__ == "__main__":
    raise SystemExit(main())
