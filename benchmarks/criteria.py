"""Top-1 on real CIFAR-10 after pruning ResNet-20 with every criterion, without fine-tuning.

What it measures
----------------
The pretrained ResNet-20 of ``../shared/data/cifar10/resnet20.onnx`` (relative to the repository
root; BN folded, 91.5 % top-1 on ``test1000.npz``) is loaded and analyzed once
(``onnxprune.api.load_and_analyze``). Every criterion scores the channels **once**
(``score_groups``; its wall time is the "scoring" column); the same scores are then used at
every ratio in ``--ratios`` (``select`` with local scope, ``apply_plan``, ONNX Runtime on CPU
with graph optimizations): the pruned model's top-1 on the 1,000 images of ``test1000.npz``
(uint8 NHWC, normalized like the calibration images). No fine-tuning: this compares how much of
the network each criterion keeps intact, not the accuracy after recovery.

* weight criteria: l1, l2, fpgm (bn_scale is not applicable: the BatchNorms are folded; its
  refusal is printed);
* data criteria: apoz, mean_act, std_act, hrank, es (one streaming pass over the calibration set
  each), kl (one variant per channel, several per ONNX Runtime call), taylor (autograd with
  torch, else two variants per channel; ``benchmarks/criteria_speed.py`` times both paths), on
  ``--calib-samples`` images drawn (seed 0) from the JPEG ``train/`` folder of ``cifar10-jpg.tar.gz``, preprocessed
  ``scale=255, mean=0.485/0.456/0.406, std=0.229/0.224/0.225`` (32x32, layout auto);
* ``random`` with ``--seeds`` seeds: mean +- sample std of the top-1 (scoring time per seed).

The archive is extracted once, at run time, to ``--cache`` (default
``~/.cache/onnxprune-bench/cifar10-jpg``; reused when complete) - never into the repository.

Printed: the unpruned top-1, MACs kept per ratio (``onnxprune.report.document.model_summary``), the
table (criterion | top-1 per ratio | scoring time), the total wall time and one line per ratio
naming the criteria whose top-1 beats random's mean. The table is also written to
``--out`` (default ``benchmarks/out/``) as ``criteria.json`` and ``criteria.md``.
There is no accuracy goal: the exit status is 0 unless something fails.

Usage: ``.venv/bin/python benchmarks/criteria.py [--calib-samples 500] [--criteria l1,kl]
[--seeds 5] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402

from onnxprune.api import load_and_analyze, score_groups  # noqa: E402
from onnxprune.errors import InputError  # noqa: E402
from onnxprune.measure.calibration import Preprocess, load_calibration  # noqa: E402
from onnxprune.model.runtime import run_model  # noqa: E402
from onnxprune.passes import apply_plan  # noqa: E402
from onnxprune.report.document import model_summary  # noqa: E402
from onnxprune.select.selection import SelectOptions, select  # noqa: E402

DATA = common.REPO.parent / "shared" / "data" / "cifar10"
MODEL = DATA / "resnet20.onnx"
ARCHIVE = DATA / "cifar10-jpg.tar.gz"
TEST = DATA / "test1000.npz"
PREPROCESS = "scale=255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=auto"
DEFAULT_CACHE = Path.home() / ".cache" / "onnxprune-bench" / "cifar10-jpg"

WEIGHT_CRITERIA = ["l1", "l2", "fpgm", "bn_scale"]
DATA_CRITERIA = ["apoz", "mean_act", "std_act", "hrank", "es", "kl", "taylor"]
ALL_CRITERIA = WEIGHT_CRITERIA + DATA_CRITERIA + ["random"]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def extract_train(archive: Path, cache: Path) -> Path:
    """The archive's ``train/`` folder, extracted once into ``cache`` (a ``.complete`` marker
    says a previous extraction finished; a partial one is redone)."""
    train = cache / "train"
    if (cache / ".complete").exists() and train.is_dir():
        return train
    cache.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"extracting train/ of {archive.name} to {cache} (once) ...", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = (m for m in tar if m.name == "train" or m.name.startswith("train/"))
            tar.extractall(staging, members=members, filter="data")
        (staging / ".complete").write_text("train/\n")
        if cache.exists():
            shutil.rmtree(cache)
        staging.rename(cache)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"  done in {common.fmt_s(time.perf_counter() - t0)}", flush=True)
    return train


def load_test(model) -> tuple[dict, np.ndarray]:
    """The feeds and labels of test1000.npz, normalized like the calibration images."""
    from onnxprune.measure.calibration import ModelInput

    target = ModelInput.of(model)
    with np.load(TEST) as archive:
        x, y = archive["x"], archive["y"]
    inputs = Preprocess.parse(PREPROCESS).apply(x, target.channels_first).astype(target.dtype)
    return {target.name: inputs}, np.asarray(y)


def source_version() -> str:
    """The repository's commit, and whether onnxprune/ differs from it (the library moves)."""
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=common.REPO, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--", "onnxprune"))
    except OSError:
        return "unknown commit"
    return f"commit {commit}" + (" + uncommitted changes in onnxprune/" if dirty else "")


def preamble(*required: Path) -> bool:
    """The start of a CIFAR benchmark: False (after one 'missing PATH' line on stderr) when a
    `required` file is absent, else print the environment, the background load (waiting up to 30 s
    for it to settle) and the onnxprune source that runs (the package's folder: an installed copy
    may not be this checkout) and return True."""
    import onnxprune

    for path in required:
        if not path.exists():
            print(f"missing {path}", file=sys.stderr)
            return False
    print(common.environment())
    print(common.wait_for_idle(30))
    print(f"onnxprune: {source_version()}, imported from {Path(onnxprune.__file__).resolve().parent}")
    return True


def top1(model, feeds: dict, labels: np.ndarray) -> float:
    logits = next(iter(run_model(model, feeds, optimize=True).values()))
    return float(np.mean(logits.argmax(axis=1) == labels))


# --------------------------------------------------------------------------------------------
# one criterion
# --------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress counter on stderr for the calibration batches of slow criteria."""

    def __init__(self, label: str, batches: int, enabled: bool):
        self.label, self.batches, self.enabled = label, batches, enabled
        self.tty = sys.stderr.isatty()
        self.done, self.t0, self.last, self.printed = 0, time.perf_counter(), time.perf_counter(), False

    def __call__(self):
        self.done += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        text = f"  {self.label}: batch {self.done}/{self.batches}, {now - self.t0:.0f} s"
        if self.tty:  # one updating line
            print("\r" + text, end="", file=sys.stderr, flush=True)
            self.printed = True
        elif now - self.last > 30:  # a log file: a line at most every 30 s
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def close(self):
        if self.printed:
            print(file=sys.stderr, flush=True)


def evaluate(analysis, scores: dict, ratios: list[float], feeds, labels) -> list[dict]:
    """Top-1 and MACs of the model pruned at every ratio with one set of scores."""
    results = []
    for ratio in ratios:
        plan = select(analysis.groups, scores, SelectOptions(ratio=ratio))
        pruned = apply_plan(analysis.model, plan, analysis.view).model
        results.append({"ratio": ratio, "top1": top1(pruned, feeds, labels), "macs": model_summary(pruned)["macs"]})
    return results


def run_criterion(name: str, analysis, data, ratios, feeds, labels, seeds: int, verbose: bool) -> dict:
    """Score once (per seed for random), evaluate at every ratio."""
    runs = []
    for seed in range(seeds) if name == "random" else [0]:
        progress = Progress(name, data.num_batches, verbose) if data is not None else None
        t0 = time.perf_counter()
        try:
            scores = score_groups(analysis, name, seed=seed, data=data, progress=progress)
        except InputError as exc:
            return {"criterion": name, "applicable": False, "reason": str(exc)}
        finally:
            if progress:
                progress.close()
        seconds = time.perf_counter() - t0
        runs.append({"seed": seed, "scoring_s": seconds, "results": evaluate(analysis, scores, ratios, feeds, labels)})
    per_ratio = []
    for i, ratio in enumerate(ratios):
        accs = [r["results"][i]["top1"] for r in runs]
        macs = [r["results"][i]["macs"] for r in runs]
        per_ratio.append(
            {
                "ratio": ratio,
                "top1": statistics.fmean(accs),
                "top1_std": statistics.stdev(accs) if len(accs) > 1 else None,
                "top1_all": accs,
                "macs": statistics.fmean(macs),
            }
        )
    return {
        "criterion": name,
        "applicable": True,
        "runs": len(runs),
        "scoring_s": statistics.fmean(r["scoring_s"] for r in runs),
        "scoring_s_total": sum(r["scoring_s"] for r in runs),
        "ratios": per_ratio,
    }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def ratio_label(ratio: float) -> str:
    return f"{100 * ratio:g} %"


def accuracy_cell(entry: dict) -> str:
    if entry["top1_std"] is None:
        return pct(entry["top1"])
    return f"{100 * entry['top1']:.1f} ± {100 * entry['top1_std']:.1f} %"


def rows_of(results: list[dict], ratios: list[float], macs_before: int) -> list[list[str]]:
    """One row per criterion: top-1 and MACs kept (share of the unpruned model's) per ratio, and
    the scoring time."""
    rows = []
    for res in results:
        if not res["applicable"]:
            rows.append([res["criterion"]] + ["n/a"] * (2 * len(ratios)) + ["not applicable"])
            continue
        label = res["criterion"] + (f" ({res['runs']} seeds)" if res["runs"] > 1 else "")
        time_cell = common.fmt_s(res["scoring_s"]) + (" / seed" if res["runs"] > 1 else "")
        cells = [c for e in res["ratios"] for c in (accuracy_cell(e), pct(e["macs"] / macs_before))]
        rows.append([label] + cells + [time_cell])
    return rows


def macs_lines(results: list[dict], ratios: list[float], macs_before: int) -> list[str]:
    lines = []
    for i, ratio in enumerate(ratios):
        kept = sorted({round(r["ratios"][i]["macs"]) for r in results if r["applicable"]})
        if not kept:
            continue
        if len(kept) == 1:
            text = f"{kept[0] / 1e6:.2f} M ({pct(kept[0] / macs_before)})"
        else:
            text = (
                f"{kept[0] / 1e6:.2f}-{kept[-1] / 1e6:.2f} M "
                f"({pct(kept[0] / macs_before)}-{pct(kept[-1] / macs_before)}, depends on the criterion)"
            )
        lines.append(f"MACs kept @{ratio_label(ratio)} of channels pruned: {text} of {macs_before / 1e6:.2f} M")
    return lines


def beats_random(results: list[dict], ratios: list[float]) -> list[str]:
    random = next((r for r in results if r["criterion"] == "random" and r["applicable"]), None)
    if random is None:
        return ["(random not run: no comparison with random)"]
    parts = []
    for i, ratio in enumerate(ratios):
        mean = random["ratios"][i]["top1"]
        winners = [
            r["criterion"]
            for r in results
            if r["applicable"] and r["criterion"] != "random" and r["ratios"][i]["top1"] > mean
        ]
        parts.append(f"@{ratio_label(ratio)} (random {pct(mean)}): {', '.join(winners) or 'none'}")
    return ["beat random's mean top-1 " + "; ".join(parts)]


def markdown(headers, rows, notes: list[str]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out + [""] + [f"* {n}" for n in notes]) + "\n"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-samples", type=int, default=500, help="calibration images (default 500)")
    parser.add_argument(
        "--criteria",
        default=",".join(ALL_CRITERIA),
        help=f"comma-separated subset of {','.join(ALL_CRITERIA)} (default: all)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the random criterion (default 5)")
    parser.add_argument("--ratios", default="0.3,0.5", help="comma-separated pruning ratios (default 0.3,0.5)")
    parser.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default 64)")
    parser.add_argument(
        "--out",
        type=Path,
        default=common.REPO / "benchmarks" / "out",
        help="folder for criteria.json and criteria.md (default benchmarks/out/)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the JPEG archive is extracted once (default {DEFAULT_CACHE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-batch progress on stderr")
    args = parser.parse_args(argv)
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    unknown = [c for c in args.criteria if c not in ALL_CRITERIA]
    if unknown:
        parser.error(f"unknown criteria {', '.join(unknown)} (known: {', '.join(ALL_CRITERIA)})")
    args.ratios = [float(r) for r in args.ratios.split(",")]
    if args.seeds < 1 or args.calib_samples < 1:
        parser.error("--seeds and --calib-samples must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if not preamble(MODEL, ARCHIVE, TEST):
        return 2

    analysis = load_and_analyze(MODEL)
    feeds, labels = load_test(analysis.model)
    base_top1 = top1(analysis.model, feeds, labels)
    macs_before = model_summary(analysis.model, analysis.view)["macs"]
    prunable = [g for g in analysis.groups if g.prunable]
    print(
        f"model: {MODEL.name}, {len(analysis.groups)} groups ({len(prunable)} prunable, "
        f"{sum(g.channels for g in prunable)} channels), {macs_before / 1e6:.2f} M MACs, "
        f"unpruned top-1 on {TEST.name}: {pct(base_top1)}"
    )

    data = None
    if any(c in DATA_CRITERIA for c in args.criteria):
        train = extract_train(ARCHIVE, args.cache)
        data = load_calibration(train, analysis.model, args.calib_samples, PREPROCESS, args.batch_size, seed=0)
        print(
            f"calibration: {data.samples} images from {train} ({data.num_batches} batches of "
            f"{data.batch_size}), preprocessing {PREPROCESS}"
        )

    results = []
    for name in args.criteria:
        res = run_criterion(
            name,
            analysis,
            data if name in DATA_CRITERIA else None,
            args.ratios,
            feeds,
            labels,
            args.seeds,
            not args.quiet,
        )
        results.append(res)
        if res["applicable"]:
            accs = ", ".join(f"{accuracy_cell(e)} @{ratio_label(e['ratio'])}" for e in res["ratios"])
            print(
                f"  {name}: {accs}; scoring {common.fmt_s(res['scoring_s'])}"
                + (" per seed" if res["runs"] > 1 else ""),
                flush=True,
            )
        else:
            print(f"  {name}: not applicable: {res['reason']}", flush=True)

    headers = (
        ["criterion"]
        + [h for r in args.ratios for h in (f"top-1 @{ratio_label(r)}", f"MACs @{ratio_label(r)}")]
        + ["scoring time"]
    )
    rows = rows_of(results, args.ratios, macs_before)
    wall = time.perf_counter() - start
    notes = [
        f"ResNet-20, unpruned top-1 {pct(base_top1)} on test1000.npz; local scope, no fine-tuning",
        *macs_lines(results, args.ratios, macs_before),
        *(f"{r['criterion']}: {r['reason']}" for r in results if not r["applicable"]),
        *beats_random(results, args.ratios),
        f"total wall time {common.fmt_s(wall)}",
    ]
    print()
    print(
        common.table(
            headers,
            rows,
            title=f"top-1 on {TEST.name} after pruning {MODEL.name} "
            f"(calibration: {data.samples if data else 0} train JPEGs)",
        )
    )
    print()
    for note in notes:
        print(note)

    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "model": str(MODEL),
        "test": str(TEST),
        "unpruned_top1": base_top1,
        "macs_before": macs_before,
        "calib_samples": data.samples if data else None,
        "preprocess": PREPROCESS,
        "ratios": args.ratios,
        "seeds": args.seeds,
        "results": results,
        "wall_s": wall,
        "environment": common.environment(),
        "source": source_version(),
    }
    (args.out / "criteria.json").write_text(json.dumps(document, indent=1))
    (args.out / "criteria.md").write_text(markdown(headers, rows, notes))
    print(f"written: {args.out / 'criteria.json'}, {args.out / 'criteria.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
