"""Sparsity training before cutting (``finetune --group-lasso λ``).

The penalty is λ · Σ_channels ‖w_c‖₂ over every channel of every prunable channel group of the
analysis, where w_c holds all the group members' slices of channel c together (the producers'
filters and biases, the consumers' input columns, BN scales: every weight axis whose slices the
channel owns), so a channel is pushed to zero as a whole and the magnitude criteria (``l1``,
``l2``, ``bn_scale``) then find it. Unfolded BatchNormalization nodes (``--unfold-bn``) join the
channels of the layer they follow.

It is minimized by proximal gradient steps: after every optimizer step each channel's slices are
shrunk by the group soft-threshold, w_c ← w_c · max(0, 1 − lr · λ / ‖w_c‖₂), the proximal operator
of lr · λ · ‖w_c‖₂. Unlike a subgradient of the norm, it sets channels exactly to zero. The same
deterministic update runs on every data-parallel rank.

A channel counts as collapsed when its norm is at most 1e-3 of the median channel norm of all
penalized channels; :meth:`GroupLasso.metrics` reports their share and the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: a channel whose norm is below this share of the median channel norm has collapsed
COLLAPSE_RATIO = 1e-3


@dataclass
class _Member:
    """One weight axis of a group: the parameter, its channel axis and each atom's channel id."""

    tensor: Any
    axis: int
    channel: Any  # int64 tensor: the channel (offset into the concatenation of all groups) of each atom


@dataclass
class GroupLasso:
    """The channel groups of a model as slices of a module's parameters, and the penalty."""

    strength: float
    members: list[_Member]
    channels: int
    groups: list[tuple[str, int, int]] = field(default_factory=list)  # (group id, first channel, channels)

    @classmethod
    def of(cls, module, groups, strength: float, extra: dict[str, list[str]] | None = None) -> GroupLasso:
        """The penalty over the prunable `groups` (from the analysis of the model `module` was
        built from); `extra` maps a weight to more tensors whose axis 0 shares that weight's
        axis-0 channels (e.g. unfolded BN scale and bias)."""
        import torch

        params = module.onnx_parameters
        members: list[_Member] = []
        spans = []
        offset = 0
        for group in groups:
            if not group.prunable:
                continue
            seen = set()
            for use in group.members:
                if use.space in seen or use.space.tensor not in params:
                    continue
                seen.add(use.space)
                channel = torch.from_numpy(np.asarray(group.channel_of[use.space], dtype=np.int64) + offset)
                members.append(_Member(params[use.space.tensor], use.space.axis, channel))
                if use.space.axis == 0:
                    for name in (extra or {}).get(use.space.tensor, []):
                        members.append(_Member(params[name], 0, channel))
            spans.append((group.id, offset, group.channels))
            offset += group.channels
        return cls(float(strength), members, offset, spans)

    def norms(self):
        """Every penalized channel's L2 norm over all its members' slices (a float64 tensor)."""
        import torch

        total = torch.zeros(self.channels, dtype=torch.float64)
        with torch.no_grad():
            for m in self.members:
                rows = m.tensor.detach().movedim(m.axis, 0).reshape(m.tensor.shape[m.axis], -1)
                sq = (rows.double() ** 2).sum(1).cpu()
                total.index_add_(0, m.channel, sq)
        return total.sqrt()

    def step(self, lr: float) -> None:
        """The proximal step of lr · λ · Σ‖w_c‖₂ (see the module docstring)."""
        import torch

        if not self.members or self.strength <= 0:
            return
        norms = self.norms()
        factor = torch.clamp(1 - lr * self.strength / norms.clamp_min(1e-30), min=0.0)
        with torch.no_grad():
            for m in self.members:
                f = factor[m.channel].to(m.tensor.device, m.tensor.dtype)
                shape = [1] * m.tensor.dim()
                shape[m.axis] = -1
                m.tensor.mul_(f.reshape(shape))

    def collapsed(self) -> np.ndarray:
        """A bool per penalized channel: its norm fell below COLLAPSE_RATIO of the median."""
        norms = self.norms().numpy()
        return norms <= COLLAPSE_RATIO * np.median(norms) if norms.size else np.zeros(0, dtype=bool)

    def collapsed_channels(self) -> dict[str, np.ndarray]:
        """Group id -> the collapsed channels of that group (sorted ids)."""
        dead = self.collapsed()
        return {gid: np.flatnonzero(dead[first : first + n]) for gid, first, n in self.groups}

    def metrics(self) -> dict:
        """The penalty λ · Σ‖w_c‖₂ and the share of collapsed channels (for the history)."""
        norms = self.norms()
        dead = self.collapsed()
        return {
            "lasso_penalty": float(self.strength * norms.sum()),
            "lasso_collapsed": float(dead.mean()) if dead.size else 0.0,
        }
