"""Do `onnxprune bench` gates flake under load? A 1.5x and a 5x `--min-speedup` gate on the pruned
ResNet-50 (true speedup ~3.5x), each run 20 times while a busy process competes for the CPU.

What it does
------------
ResNet-50 (``common.build_resnet50``, 224x224, TorchScript export) is pruned with
``onnxprune.prune(path, ratio=--ratio)`` (L1, verified); both files are kept in ``--models-dir``
and reused by later runs. Then ``--load`` busy-looping Python processes are started (one core each;
whatever else runs on the machine adds to them), and the CLI is run in-process, the two gates
alternating so that both see the same load::

    onnxprune bench resnet50.onnx resnet50.pruned.onnx --batch 1 --iters 12 --block 4 --warmup 1 \
        --min-speedup {1.5|5} --confidence 0.95 --max-rounds 3 --json

Each repetition records the exit code, the gate's state on its interval (pass / fail /
inconclusive), how it was decided, the rounds and timed runs it took, the speedup and its interval.

Goal: over ``--reps`` repetitions each, the 1.5x gate never fails (exit 1) and the 5x gate never
passes (exit 0); exit status 1 when either happens (unless ``--no-fail``), 2 for bad options.
Writes ``--out``/ci_gate_noise.json. Usage:
``.venv/bin/python benchmarks/ci_gate_noise.py [--reps 20] [--load 1] [--iters 12] [--block 4]``.

Cost: 3 blocks of 4 runs per model and round is the fewest a gate accepts; on 2 cores shared with
other jobs (load average ~9) a repetition takes ~10-15 s, the whole run ~8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.cli import main as onnxprune_main  # noqa: E402

GATES = (1.5, 5.0)


def models(folder: Path, ratio: float) -> tuple[Path, Path]:
    """ResNet-50 and its pruned copy, exported and pruned once into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    base, pruned = folder / "resnet50.onnx", folder / f"resnet50.pruned-{ratio}.onnx"
    if not base.is_file():
        common.export(common.build_resnet50(), common.RESNET50_INPUT, base)
    if not pruned.is_file():
        onnxprune.prune(str(base), ratio=ratio).save(pruned)
    return base, pruned


def start_load(count: int) -> list[subprocess.Popen]:
    """`count` processes that each keep one core busy (a SIGTERM to this script still ends them)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    """End the load processes this script started."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def one_run(base: Path, pruned: Path, gate: float, args) -> dict:
    """One gated `onnxprune bench`: its exit code, the gate's decision and the seconds it took."""
    argv = ["bench", str(base), str(pruned), "--batch", str(args.batch), "--iters", str(args.iters)]
    argv += ["--block", str(args.block), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    argv += ["--min-speedup", str(gate), "--confidence", str(args.confidence), "--max-rounds", str(args.max_rounds)]
    argv += ["--json"] + (["--no-spin"] if args.no_spin else [])
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = onnxprune_main(argv)
    seconds = time.perf_counter() - started
    if code not in (0, 1):
        raise SystemExit(f"ci_gate_noise: onnxprune bench exited {code}: {err.getvalue().strip()}")
    (decision,) = json.loads(out.getvalue())["gates"]
    return {**decision, "gate": gate, "code": code, "seconds": seconds}


def summary_rows(runs: list[dict]) -> list[list[str]]:
    """One row per gate: outcomes, rounds, speedups, interval widths, time."""
    rows = []
    for gate in GATES:
        mine = [r for r in runs if r["gate"] == gate]
        points = [r["measured"] for r in mine]
        widths = [r["high"] - r["low"] for r in mine]
        rounds = [r["rounds"] for r in mine]
        rows.append(
            [
                f"min-speedup {gate}x",
                str(len(mine)),
                str(sum(r["code"] == 0 for r in mine)),
                str(sum(r["code"] == 1 for r in mine)),
                str(sum(r["state"] == "inconclusive" for r in mine)),
                f"{statistics.mean(rounds):.2f} / {max(rounds)}",
                f"{min(points):.2f} / {statistics.median(points):.2f} / {max(points):.2f}",
                f"{statistics.median(widths):.2f}",
                f"{statistics.mean(r['seconds'] for r in mine):.1f}",
            ]
        )
    return rows


def parse_args(argv):
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20, help="repetitions of each gate (default 20)")
    parser.add_argument("--load", type=int, default=1, help="busy processes started alongside (default 1)")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--iters", type=int, default=12, help="timed runs per model and round (default 12)")
    parser.add_argument("--block", type=int, default=4, help="runs per interleaved block (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model and round (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default 0: all cores)")
    parser.add_argument("--no-spin", action="store_true", help="idle ORT workers sleep instead of spinning")
    parser.add_argument("--confidence", type=float, default=0.95, help="gate confidence (default 0.95)")
    parser.add_argument("--max-rounds", type=int, default=3, help="most rounds per gate (default 3)")
    parser.add_argument(
        "--models-dir",
        default="/tmp/onnxprune-ci-gate-noise",
        help="where ResNet-50 and its pruned copy are kept between runs (default /tmp/onnxprune-ci-gate-noise)",
    )
    parser.add_argument("--out", default=str(common.REPO / "benchmarks" / "out"), help="folder for ci_gate_noise.json")
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when the goal is missed")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.load < 0:
        parser.error("--reps must be at least 1 and --load at least 0")
    return args


def main(argv=None) -> int:
    """Run the repetitions under load; the exit status says whether a gate flaked."""
    args = parse_args(argv)
    print(common.environment())
    base, pruned = models(Path(args.models_dir), args.ratio)
    print(f"models: {base} and {pruned}; before the load, {common.wait_for_idle(0)}")
    load = start_load(args.load)
    runs: list[dict] = []
    try:
        time.sleep(0.5)
        print(f"started {args.load} busy process(es); with them, {common.wait_for_idle(0)}", flush=True)
        for rep in range(args.reps):
            for gate in GATES:
                run = one_run(base, pruned, gate, args)
                runs.append(run)
                print(
                    f"  rep {rep + 1:2d} gate {gate}x: exit {run['code']}, {run['state']} -> {run['verdict']} "
                    f"({run['decided_by']}), speedup {run['measured']:.2f}x [{run['low']:.2f}, {run['high']:.2f}], "
                    f"{run['rounds']} round(s), {run['runs']} runs, {run['seconds']:.1f} s",
                    flush=True,
                )
        after = common.wait_for_idle(0)
    finally:
        stop_load(load)
    headers = ["gate", "reps", "exit 0", "exit 1", "inconclusive", "rounds mean/max", "speedup min/med/max"]
    headers += ["CI width (med)", "s per run"]
    title = (
        f"pruned ResNet-50 (ratio {args.ratio}), batch {args.batch}, {args.iters} runs in blocks of {args.block} "
        f"per round, {args.confidence:g} confidence, up to {args.max_rounds} rounds, {args.load} busy process(es)"
    )
    print("\n" + common.table(headers, summary_rows(runs), title=title))
    print(f"during the load, {after}")
    flaked_pass = sum(r["code"] == 1 for r in runs if r["gate"] == GATES[0])
    flaked_fail = sum(r["code"] == 0 for r in runs if r["gate"] == GATES[1])
    ok = flaked_pass == 0 and flaked_fail == 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": "onnxprune-ci-gate-noise/1", "options": vars(args), "background": after, "runs": runs, "ok": ok}
    (out / "ci_gate_noise.json").write_text(json.dumps(doc, indent=1))
    print(
        f"goal: the {GATES[0]}x gate never fails ({flaked_pass} failed) and the {GATES[1]}x gate never passes "
        f"({flaked_fail} passed) over {args.reps} repetitions: {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
