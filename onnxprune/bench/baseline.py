"""Stored baselines: `--save-baseline` writes the measurement (`onnxprune-bench/1`, every timed run
kept) and `--baseline` compares today's models with their stored selves.

A baseline is only comparable on the machine and runtime it was measured with: the device (CPU
model or GPU name), the CPU count, the execution provider, the ONNX Runtime version, the intra-op
threads, IO binding and spinning must all match, else it is refused (unless forced).

Models are matched by file name: the model a pipeline rebuilds keeps its name while its content
changes, which is what a regression gate is for. When a name is not in the baseline (or is there
twice), the file's SHA-256 finds a renamed but identical model. A model with no match is reported
and not gated; a baseline that matches none of the models is refused."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxprune.bench.gates import REGRESSION, Gate, model_name
from onnxprune.bench.suite import FORMAT, BenchResult
from onnxprune.errors import InputError
from onnxprune.model.io import atomic_write_text

#: the settings a baseline must share with the run it is compared with
COMPARED = ("device", "cpu_count", "provider", "onnxruntime", "threads", "io_binding", "spin")


@dataclass
class Baseline:
    """A stored measurement: where it was read from and its document."""

    path: Path
    doc: dict

    def settings(self) -> dict:
        """The compared settings as stored."""
        return {key: self.doc.get(key) for key in COMPARED}

    def entry(self, model: str, sha256: str) -> dict | None:
        """The stored model matching a model's path and hash (see the module docstring)."""
        stored = [m for m in self.doc.get("models", []) if isinstance(m, dict) and "path" in m]
        named = [m for m in stored if model_name(m["path"]) == model_name(model)]
        if len(named) == 1:
            return named[0]
        exact = [m for m in named if m["path"] == model]
        if len(exact) == 1:
            return exact[0]
        same = [m for m in stored if sha256 and m.get("sha256") == sha256]
        return same[0] if len(same) == 1 else None

    def runs(self, path: str, batch: int) -> np.ndarray | None:
        """A stored model's timed runs (ms) at a batch size, or its median alone when the runs are not
        kept; None when the baseline did not time that batch size."""
        for row in self.doc.get("results", []):
            if row.get("model") == path and row.get("batch") == batch:
                runs = row.get("samples_ms") or [row["median_ms"]]
                return np.asarray(runs, dtype=np.float64)
        return None


def save_baseline(result: BenchResult, path: str | os.PathLike) -> Path:
    """Write the measurement with every timed run (the baseline document)."""
    return atomic_write_text(Path(path), json.dumps(result.to_dict(samples=True), indent=1))


def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read a baseline; InputError when it is missing or not an `onnxprune-bench/1` document."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"--baseline {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError:
        raise InputError(f"--baseline {path}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("results"), list):
        raise InputError(f"--baseline {path}: not an {FORMAT} document (write one with --save-baseline)")
    return Baseline(path, doc)


def check_compatible(baseline: Baseline, current: dict, force: bool) -> list[str]:
    """Refuse (InputError) a baseline measured with other settings than `current`'s, unless `force`;
    the differences as notes (empty when none)."""
    stored = baseline.settings()
    differ = [
        f"{key} {stored[key]!r} there, {current.get(key)!r} here" for key in COMPARED if stored[key] != current.get(key)
    ]
    if not differ:
        return []
    text = "; ".join(differ)
    if not force:
        raise InputError(
            f"--baseline {baseline.path} was measured elsewhere ({text}): its timings are not comparable; "
            "save a new one here with --save-baseline, or compare anyway with --force"
        )
    return [f"baseline {baseline.path.name} measured elsewhere, compared anyway (--force): {text}"]


def regression_gates(baseline: Baseline, result: BenchResult, allowed: float) -> tuple[list[Gate], list[str]]:
    """A gate per model and batch size the baseline has: median at most (1 + allowed) × the stored
    median; and notes on the models and batch sizes it lacks."""
    gates, notes, matched = [], [], 0
    block = int(baseline.doc.get("block") or 1)
    for index, model in enumerate(result.models):
        entry = baseline.entry(model.path, model.sha256)
        if entry is None:
            notes.append(f"{model_name(model.path)}: not in baseline {baseline.path.name}, not gated")
            continue
        matched += 1
        same = " (same file)" if entry.get("sha256") and entry.get("sha256") == model.sha256 else ""
        for batch in result.options.batches:
            runs = baseline.runs(entry["path"], batch)
            if runs is None:
                notes.append(f"{model_name(model.path)}: baseline has no batch {batch}, not gated")
                continue
            gate = Gate(
                REGRESSION, index, batch, 1.0 + allowed, baseline=runs, baseline_block=block if runs.size > 1 else 1
            )
            gates.append(gate)
        notes.append(f"{model_name(model.path)}: compared with {model_name(entry['path'])} of the baseline{same}")
    if not matched:
        raise InputError(
            f"--baseline {baseline.path}: none of the models is in it (it has "
            f"{', '.join(model_name(m['path']) for m in baseline.doc.get('models', []))})"
        )
    return gates, notes
