"""Block bootstrap of latency statistics. The timed runs come in interleaved blocks (see
`interleaved_calls`): runs within a block share the load of that moment, so whole blocks are
resampled, and the blocks of models timed side by side are resampled together (paired), which keeps
a load burst that hit both models in one block from widening the interval of their ratio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: resamples drawn at once (rows x runs); larger draws are taken in chunks
CHUNK_VALUES = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap confidence interval [low, high]."""

    point: float
    low: float
    high: float

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"point": self.point, "low": self.low, "high": self.high}


def as_blocks(samples, block: int) -> np.ndarray:
    """Timed runs as a (blocks, block) array; a short last block (never made by `interleaved_calls`)
    is dropped unless it is the only one."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    block = max(1, int(block))
    whole = values.size // block
    if whole == 0:
        return values.reshape(1, -1)
    return values[: whole * block].reshape(whole, block)


def resampled_medians(blocks: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The median of the pooled runs of each resample: row r of `index` lists the blocks drawn."""
    out = np.empty(len(index))
    rows = max(1, CHUNK_VALUES // max(1, blocks.size))
    for start in range(0, len(index), rows):
        part = index[start : start + rows]
        out[start : start + rows] = np.median(blocks[part].reshape(len(part), -1), axis=1)
    return out


def draws(rng: np.random.Generator, blocks: int, resamples: int) -> np.ndarray:
    """`resamples` rows of `blocks` block indices drawn with replacement."""
    return rng.integers(0, blocks, size=(resamples, blocks))


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def median_estimate(blocks: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float) -> Estimate:
    """The median run and its interval."""
    values = resampled_medians(blocks, draws(rng, len(blocks), resamples))
    return Estimate(float(np.median(blocks)), *interval(values, confidence))


def ratio_estimate(
    numerator: np.ndarray,
    denominator: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
    confidence: float,
    paired: bool = True,
) -> Estimate:
    """median(numerator) / median(denominator) and its interval. Paired: block i of both was timed
    side by side, so the same blocks are drawn for both (needs as many blocks in each); unpaired
    (a stored baseline against today's runs): each side is resampled on its own."""
    index = draws(rng, len(numerator), resamples)
    if paired and len(numerator) != len(denominator):
        raise ValueError(f"paired blocks differ in number: {len(numerator)} and {len(denominator)}")
    other = index if paired else draws(rng, len(denominator), resamples)
    values = resampled_medians(numerator, index) / resampled_medians(denominator, other)
    return Estimate(float(np.median(numerator) / np.median(denominator)), *interval(values, confidence))
