"""One output of the pruned model against the masked reference: the largest difference over the
finite values, relative to the reference's largest magnitude."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The smallest tolerance (relative to the output's largest magnitude); the tolerance of each
#: output is calibrated from the model's own float noise above it (see noise.py).
RTOL = 1e-4


@dataclass
class OutputCheck:
    """How far one output of the pruned model is from the masked reference, with the output's
    float noise and the tolerance calibrated from it."""

    name: str
    max_abs_diff: float
    scale: float
    noise: float = 0.0
    tolerance: float = RTOL

    @property
    def relative(self) -> float:
        """max |pruned - reference| divided by max |reference|."""
        return self.max_abs_diff / self.scale if self.scale > 0 else self.max_abs_diff

    @property
    def ok(self) -> bool:
        """True within the output's tolerance."""
        return bool(np.isfinite(self.max_abs_diff)) and self.relative <= self.tolerance


def compare_one(name: str, got: np.ndarray, ref: np.ndarray) -> OutputCheck:
    """Largest difference over the finite values; NaN and ±Inf must sit at the same places with
    the same values in both (else the difference is infinite)."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(ref64)
    if not np.array_equal(finite, np.isfinite(got64)) or not np.array_equal(
        ref64[~finite], got64[~finite], equal_nan=True
    ):
        return OutputCheck(name, float("inf"), 1.0)
    if not finite.any():
        return OutputCheck(name, 0.0, 0.0)
    diff = float(np.max(np.abs(got64[finite] - ref64[finite])))
    return OutputCheck(name, diff, float(np.max(np.abs(ref64[finite]))))
