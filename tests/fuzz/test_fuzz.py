"""Fuzzing the command line with mutated ONNX files.

Every case is first analyzed (`onnxprune analyze`: exit 0, or 2 with one line), then pruned, and
the pruning must end in one of two ways: a clear error (exit 2, one line on stderr, no traceback,
nothing written, input untouched) or a model that `onnxprune check` independently verifies against
the mutated input and its plan. A wrong model or any other ending (internal error, traceback) fails
the test. ``FUZZ_CASES`` (environment) sets the number of cases (default 600, about 15 s); the
counts per mutation kind are printed at the end of the pytest run.
"""

from __future__ import annotations

import collections
import hashlib
import os
from pathlib import Path

import numpy as np
from mutators import MUTATORS, seed_models

from onnxprune.cli import main
from onnxprune.verify.check import check_pruned

CASES = int(os.environ.get("FUZZ_CASES", "600"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))

#: kind -> Counter of outcomes ("error", "verified", "wrong", "crash"); printed by conftest.py
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def run_case(kind: str, model, rng: np.random.Generator, folder: Path, capfd) -> tuple[str, str]:
    """Mutate, run `onnxprune` on the file, classify the ending: (outcome, detail)."""
    folder.mkdir()
    source = folder / "model.onnx"
    source.write_bytes(MUTATORS[kind](model, rng))
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    ratio = str(rng.choice([0.25, 0.5, 0.75]))
    capfd.readouterr()
    analyzed = main(["analyze", str(source), "--json"])
    _, err = capfd.readouterr()
    if analyzed not in (0, 2) or (analyzed == 2 and not _one_error_line(err)):
        return "crash", f"analyze: exit {analyzed}: {err.strip()[:300]}"
    code = main([str(source), "-o", str(folder / "out.onnx"), "--ratio", ratio])
    _, err = capfd.readouterr()
    if hashlib.sha256(source.read_bytes()).hexdigest() != before:
        return "crash", "the input file was modified"
    written = sorted(p.name for p in folder.iterdir() if p.name != "model.onnx")
    if code == 2:
        if _one_error_line(err) and not written:
            return "error", err.strip()
        return "crash", f"exit 2 but stderr {err!r}, written {written}"
    if code == 0:
        result = check_pruned(folder / "out.onnx", source, folder / "out.plan.json", seed=7, runs=2)
        return ("verified", "") if result.ok else ("wrong", f"max relative {result.max_relative}")
    return "crash", f"exit {code}: {err.strip()[:300]}"


def _one_error_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("onnxprune: error:") and "internal error" not in err


def test_fuzzed_models_end_in_a_clear_error_or_a_verified_model(tmp_path, capfd):
    seeds = seed_models()
    kinds = sorted(MUTATORS)
    failures = []
    for case in range(CASES):
        kind = kinds[case % len(kinds)]
        seed_index = (case // len(kinds)) % len(seeds)
        rng = np.random.default_rng([FUZZ_SEED, case])
        outcome, detail = run_case(kind, seeds[seed_index], rng, tmp_path / f"case{case}", capfd)
        COUNTS[kind][outcome] += 1
        if outcome in ("wrong", "crash"):
            failures.append(f"case {case} ({kind}, seed model {seed_index}): {outcome}: {detail}")
    assert not failures, "\n".join(failures)
    totals = sum(COUNTS.values(), collections.Counter())
    assert totals["error"] + totals["verified"] == CASES
    assert totals["verified"] > 0 and totals["error"] > 0
