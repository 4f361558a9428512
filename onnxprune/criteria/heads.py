"""Attention-head importance from calibration data: the output change when a head is masked.

In an attention group every channel is one head (see `analysis.attention_rules`), so gating a
channel to 0 in front of the out projection removes that head's whole contribution — exactly what
pruning it computes. The weight criteria (`l1`, `l2`) score a head by the mean norm of its q/k/v
projection columns; this one measures what the head does to the model's output.
"""

from __future__ import annotations

import numpy as np

from onnxprune.criteria.activation import EffectCriterion
from onnxprune.criteria.base import register


def relative_change(reference: np.ndarray, gated: np.ndarray) -> np.ndarray:
    """Per-sample ‖gated − reference‖₂ / ‖reference‖₂ over everything but the batch axis."""
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    diff = gated.reshape(gated.shape[0], -1).astype(np.float64) - ref
    return np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)


@register
class HeadMask(EffectCriterion):
    """Michel et al. style head importance: mask one head (one channel of any group) at a time and
    score it by the mean relative L2 change of the first output over the calibration samples.
    Works for any output (logits or hidden states); no labels needed."""

    name = "head_mask"
    description = "relative change of the output when the head (channel) is masked, mean over samples"

    def effect(self, reference, gated, labels):
        """Per-sample relative L2 change of the output with the head masked."""
        return relative_change(reference, gated[0])
