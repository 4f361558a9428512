"""The streaming measurement behind the sensitivity study and the data-driven allocation strategies.

Pruning is simulated with `GatedModel`: gating a channel to 0 in front of every consumer computes
exactly what removing it computes, so one ONNX Runtime session serves every pruned variant.

The work is a list of *items* `(key, variants)`: a key (a group id, a candidate number) and the
variants measured under it, each `{group id: kept channel ids}` (the groups it prunes). `measure`
streams the calibration set once: batches are the outer loop (each batch is decoded once); per
batch the unpruned output (the reference) is computed once, then every variant adds to running
sums (`Sums`): squared norms of the first output's change, and correct top-1 predictions when
labels are available.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import numpy as np

from onnxprune.measure.calibration import CalibrationData
from onnxprune.measure.gated import GatedModel, keep_gate

#: One pruned variant: {group id: kept channel ids} of the groups it prunes.
Variant = dict[str, np.ndarray]
#: The work list: (key, variants measured under that key).
Work = list[tuple[Hashable, list[Variant]]]


@dataclass
class Sums:
    """Running sums of one measurement: the reference's squared norm and correct predictions, and
    per key one entry per variant of the squared output change and of the correct predictions."""

    reference_sq: float = 0.0
    reference_correct: int = 0
    samples: int = 0
    labelled: bool = True
    diff_sq: dict[Hashable, np.ndarray] = field(default_factory=dict)
    correct: dict[Hashable, np.ndarray] = field(default_factory=dict)

    @classmethod
    def for_work(cls, work: Work) -> Sums:
        """Zeroed sums for every variant of `work`."""
        return cls(
            diff_sq={key: np.zeros(len(v)) for key, v in work},
            correct={key: np.zeros(len(v), np.int64) for key, v in work},
        )

    @classmethod
    def merge(cls, parts: list[Sums]) -> Sums:
        """One set of sums from processes that measured disjoint items on the same data."""
        merged = parts[0]
        for part in parts[1:]:
            merged.diff_sq.update(part.diff_sq)
            merged.correct.update(part.correct)
        return merged

    def add_reference(self, reference: np.ndarray, labels: np.ndarray | None) -> None:
        """Add one batch of unpruned outputs."""
        self.reference_sq += float(np.sum(np.square(reference, dtype=np.float64)))
        self.samples += reference.shape[0]
        self.labelled = self.labelled and labels is not None
        if labels is not None:
            self.reference_correct += correct_predictions(reference, labels)

    def add(self, key: Hashable, index: int, output: np.ndarray, reference: np.ndarray, labels) -> None:
        """Add one batch of variant number `index` of item `key`."""
        diff = output.astype(np.float64) - reference
        self.diff_sq[key][index] += float(np.sum(diff * diff))
        if labels is not None:
            self.correct[key][index] += correct_predictions(output, labels)

    def output_changes(self, key: Hashable) -> list[float]:
        """Relative L2 change of the first output over the whole set, per variant of `key`."""
        return [relative_change(d, self.reference_sq) for d in self.diff_sq[key]]

    def top1(self, key: Hashable) -> list[float | None]:
        """Top-1 accuracy per variant of `key` (None without labels)."""
        return [float(c / self.samples) if self.labelled else None for c in self.correct[key]]

    @property
    def baseline_top1(self) -> float | None:
        """Top-1 accuracy of the unpruned model (None without labels)."""
        return self.reference_correct / self.samples if self.labelled else None


def correct_predictions(output: np.ndarray, labels: np.ndarray) -> int:
    """How many samples of a [N, K, (1...)] output have their largest entry at their label."""
    return int(np.sum(output.reshape(output.shape[0], -1).argmax(axis=1) == labels))


def top1_labels(output: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
    """Labels usable for top-1 of a [N, K, (1...)] output, else None."""
    if labels is None or output.ndim < 2 or labels.shape != (output.shape[0],):
        return None
    return labels.astype(np.int64)


def relative_change(diff_sq: float, reference_sq: float) -> float:
    """sqrt(diff_sq / reference_sq): ||y - y0|| / ||y0|| from the squared norms (0 or inf when y0 = 0)."""
    if reference_sq > 0:
        return float(math.sqrt(diff_sq / reference_sq))
    return 0.0 if diff_sq == 0 else float("inf")


def gated_outputs(
    gated: GatedModel, feeds: dict, variants: list[Variant], reference: np.ndarray
) -> Iterator[np.ndarray]:
    """The first output with each variant's groups gated, in turn; nothing is run for a variant that
    prunes nothing (every group keeps all its channels) or repeats the previous one."""
    previous_key, previous = None, reference
    for variant in variants:
        pruned = {gid: kept for gid, kept in variant.items() if len(kept) < gated.groups[gid].channels}
        key = tuple((gid, kept.tobytes()) for gid, kept in pruned.items())
        if not pruned:
            previous_key, previous = key, reference
        elif key != previous_key:
            previous_key = key
            gates = {gid: keep_gate(gated.groups[gid].channels, kept) for gid, kept in pruned.items()}
            previous = gated.run(feeds, gates)[gated.outputs[0]]
        yield previous


def measure(gated: GatedModel, data: CalibrationData, work: Work, progress: Callable[[], None] | None = None) -> Sums:
    """Stream the calibration set once through `gated`: per batch the reference output, then every
    variant of every item of `work`; `progress()` is called once per (batch, item)."""
    output = gated.outputs[0]
    sums = Sums.for_work(work)
    for feeds, labels in data.batches():
        reference = gated.run(feeds)[output].astype(np.float64)
        labels = top1_labels(reference, labels)
        sums.add_reference(reference, labels)
        for key, variants in work:
            for index, result in enumerate(gated_outputs(gated, feeds, variants, reference)):
                sums.add(key, index, result, reference, labels)
            if progress:
                progress()
    return sums


def group_curves(plans: list[tuple[str, list[np.ndarray]]]) -> Work:
    """The work of per-group curves: each group pruned alone to each of its kept sets
    ((group id, kept sets) -> (group id, [{group id: kept set}, ...]))."""
    return [(gid, [{gid: kept} for kept in kept_sets]) for gid, kept_sets in plans]
