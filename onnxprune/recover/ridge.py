"""The least-squares problem of one layer and the choice of its ridge.

`NormalEquations` accumulates [X 1]ᵀ[X 1], [X 1]ᵀY and |Y|² in float64, so that any solution's
squared error on those rows is known without the rows: |Y − AW|² = |Y|² − 2⟨W, AᵀY⟩ + ⟨W, AᵀA W⟩.
`choose_ridge` uses that to pick λ per layer: the fit rows' equations are solved for every λ of a
grid (a 577×577 solve each for a 3×3 conv on 64 channels, milliseconds), each solution's error is
measured on the held-out rows' equations, the best λ is kept and the layer is refitted with it on
fit and held-out rows together. The refit is accepted only when it lowers the held-out error of
the layer's current (pruned) weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: λ (relative to the mean diagonal of XᵀX) tried per layer by `choose_ridge`
RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: held-out errors (relative) up to this are float32 noise: a refit within it counts as no worse
NOISE = 1e-6
#: the λ of a layer with no held-out rows to choose by (and the report's `ridge` in auto mode)
DEFAULT_RIDGE = 1e-4


@dataclass
class NormalEquations:
    """Running AᵀA, AᵀY and |Y|² (float64) of a least-squares problem Y ≈ X W + b, A = [X 1]
    (A = X and b = 0 without `intercept`).

    Rows are either x [R, D] with targets y [R, O] (one problem), or x [R, G, D] with y [R, G, O]:
    G independent problems solved at once, one per convolution group (a depthwise Conv has one
    per channel).
    """

    intercept: bool = True
    ata: np.ndarray | None = None
    aty: np.ndarray | None = None
    yty: np.ndarray | None = None
    rows: int = 0
    grouped: bool = False

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows x [R, D] with targets y [R, O], or x [R, G, D] with y [R, G, O]."""
        self.grouped = x.ndim == 3
        x3 = x if self.grouped else x[:, None, :]
        y3 = (y if self.grouped else y[:, None, :]).astype(np.float64, copy=False)
        a = np.empty((x3.shape[1], x3.shape[0], x3.shape[2] + int(self.intercept)))  # [G, R, D+1]
        a[:, :, : x3.shape[2]] = x3.transpose(1, 0, 2)
        if self.intercept:
            a[:, :, -1] = 1.0
        yg = np.ascontiguousarray(y3.transpose(1, 0, 2))
        ata, aty = a.transpose(0, 2, 1) @ a, a.transpose(0, 2, 1) @ yg  # batched BLAS, not einsum loops
        yty = np.einsum("gro,gro->g", yg, yg)
        if self.ata is None or self.aty is None or self.yty is None:  # the first rows (all are set together)
            self.ata, self.aty, self.yty = ata, aty, yty
        else:
            self.ata += ata
            self.aty += aty
            self.yty += yty
        self.rows += x.shape[0]

    def merged(self, other: NormalEquations) -> NormalEquations:
        """The equations of both row sets together (a new object)."""
        if other.ata is None or other.aty is None or other.yty is None:
            return self
        if self.ata is None or self.aty is None or self.yty is None:
            return other
        return NormalEquations(
            self.intercept,
            self.ata + other.ata,
            self.aty + other.aty,
            self.yty + other.yty,
            self.rows + other.rows,
            self.grouped,
        )

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(W [D, O], b [O]) minimizing |Y - XW - b|² + λ·mean(diag XᵀX)·|W|² (per group:
        W [G, D, O], b [G, O])."""
        assert self.ata is not None and self.aty is not None, "rows were added"
        solved = [self._solve_one(ata, aty, ridge) for ata, aty in zip(self.ata, self.aty)]
        w, b = np.stack([s[0] for s in solved]), np.stack([s[1] for s in solved])
        return (w, b) if self.grouped else (w[0], b[0])

    def _solve_one(self, ata: np.ndarray, aty: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        lhs = ata.copy()
        d = lhs.shape[0] - int(self.intercept)
        scale = float(np.mean(np.diag(lhs)[:d])) if d else 0.0
        lhs[np.arange(d), np.arange(d)] += ridge * max(scale, 1e-12)
        try:
            solution = np.linalg.solve(lhs, aty) if ridge > 0 else np.linalg.lstsq(lhs, aty, rcond=None)[0]
        except np.linalg.LinAlgError:
            solution = np.linalg.lstsq(lhs, aty, rcond=None)[0]
        if not self.intercept:
            return solution, np.zeros(solution.shape[1])
        return solution[:-1], solution[-1]

    def error(self, w: np.ndarray, b: np.ndarray) -> float:
        """Relative L2 error sqrt(|Y − XW − b|² / |Y|²) of a solution (as `solve` returns it) on
        these rows; nan without rows."""
        if self.ata is None or self.aty is None or self.yty is None or not self.rows:
            return float("nan")
        w3, b2 = (w, b) if self.grouped else (w[None], b[None])
        full = np.concatenate([w3, b2[:, None, :]], axis=1) if self.intercept else w3
        full = full.astype(np.float64, copy=False)
        squared = np.sum(self.yty) - 2 * np.sum(full * self.aty) + np.sum(full * (self.ata @ full))
        norm = float(np.sum(self.yty))
        return float(np.sqrt(max(float(squared), 0.0) / norm)) if norm > 0 else float(np.sqrt(max(float(squared), 0.0)))


@dataclass
class RidgeChoice:
    """What `choose_ridge` decided for one layer: λ, the held-out error of the layer's current
    weights (`before`) and of the chosen refit (`after`, measured fitting on the fit rows only),
    whether the refit is taken, and the refit on all rows (`solution`, None when not accepted)."""

    ridge: float
    before: float
    after: float
    accepted: bool
    solution: tuple[np.ndarray, np.ndarray] | None = None
    errors: dict[float, float] = field(default_factory=dict)  # held-out error per λ tried

    def record(self) -> dict:
        """The report's entry of this choice (floats; nan → None)."""
        return {
            "ridge": self.ridge,
            "held_out_error_before": _finite(self.before),
            "held_out_error_after": _finite(self.after),
            "accepted": self.accepted,
        }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def choose_ridge(
    fit: NormalEquations,
    held: NormalEquations,
    current: tuple[np.ndarray, np.ndarray],
    grid: tuple[float, ...] = RIDGE_GRID,
) -> RidgeChoice:
    """The λ of `grid` whose fit-rows solution has the lowest error on the held-out rows, and the
        refit on all rows with it, accepted when that error is below the current weights' (or within
    float32 noise, `NOISE`; `current`:
        (W, b) in `solve`'s layout). Without held-out rows the first λ of `grid` is taken, unchecked."""
    everything = fit.merged(held)
    if not held.rows or not fit.rows:
        ridge = grid[0] if len(grid) == 1 else DEFAULT_RIDGE
        return RidgeChoice(ridge, float("nan"), float("nan"), True, everything.solve(ridge))
    before = held.error(*current)
    errors = {ridge: held.error(*fit.solve(ridge)) for ridge in grid}
    finite = {ridge: e for ridge, e in errors.items() if np.isfinite(e)}
    if not finite:
        return RidgeChoice(grid[0], before, float("nan"), False, None, errors)
    ridge = min(finite, key=lambda r: finite[r])
    after = finite[ridge]
    accepted = bool(after < before or after <= NOISE) or not np.isfinite(before)
    return RidgeChoice(ridge, before, after, accepted, everything.solve(ridge) if accepted else None, errors)
