"""Criteria computed from calibration data with ONNX Runtime.

Statistics criteria (apoz, mean_act, std_act, hrank, es, wanda) look at the activations that
consumer layers read (one streaming pass, see `measure.gated.collect_stats`); on a transformer the
calibration set is token ids (several inputs are fed by name, see `measure.calibration`), the
statistics run over every token, and a head's score is the mean over its channels' atoms. Effect criteria (kl, taylor)
gate each channel and measure what happens at the output (one or two variants per channel, several
variants per ONNX Runtime call, see `criteria.stacked`; taylor by autograd with torch).
"""

from __future__ import annotations

import logging

import numpy as np

from onnxprune.criteria.base import (
    Criterion,
    ScoringContext,
    atoms_to_channels,
    member_matrix,
    register,
)

LOG = logging.getLogger(__name__)


def activation_stats(ctx: ScoringContext):
    """Per-space statistics, computed once per scoring context."""
    from onnxprune.measure.gated import collect_stats

    model, view, data = ctx.data_inputs()
    return ctx.cached("stats", lambda: collect_stats(model, ctx.groups, view, data, ctx.progress))


class StatisticCriterion(Criterion):
    """A criterion that reads one per-atom statistic of the probed activations."""

    needs_data = True

    def statistic(self, stats) -> np.ndarray:
        """Per-atom value of one space's statistics (higher = keep)."""
        return stats.mean

    def score(self, group, ctx):
        stats = activation_stats(ctx)
        return atoms_to_channels(group, {s: self.statistic(v) for s, v in stats.items() if s in group.channel_of})


@register
class APoZ(StatisticCriterion):
    """Average Percentage of Zeros (Network Trimming): many zeros = unimportant; score = 1 - APoZ."""

    name = "apoz"
    description = "1 - fraction of zero activations (after ReLU)"

    def statistic(self, stats):
        return 1.0 - stats.zeros / np.maximum(stats.elements, 1)


@register
class MeanActivation(StatisticCriterion):
    """Mean absolute activation of the channel (Molchanov et al.; Minitron's activation importance),
    over every sample and position (every calibration token of a transformer); an attention head
    scores the mean over its channels of the attention output entering the out projection."""

    name = "mean_act"
    description = "mean |activation| (a head: over its channels)"

    def statistic(self, stats):
        return stats.total_abs / np.maximum(stats.elements, 1)


@register
class StdActivation(StatisticCriterion):
    """Standard deviation of the channel's activation (Molchanov et al.)."""

    name = "std_act"
    description = "standard deviation of the activation"

    def statistic(self, stats):
        return stats.std


@register
class HRank(StatisticCriterion):
    """Average rank of the channel's feature maps (Lin et al., HRank)."""

    name = "hrank"
    description = "average rank of the channel's feature maps"

    def statistic(self, stats):
        return stats.rank_sum / max(stats.samples, 1)


@register
class EmpiricalSensitivity(StatisticCriterion):
    """Largest relative contribution of the channel to the next layer (Liebenwein et al.):
    max over samples of |W[:, c]|_1 * mean|a_c| / sum_k |W[:, k]|_1 * mean|a_k|, the largest over
    the channel's consumers."""

    name = "es"
    description = "largest relative contribution to the next layer's input (max over samples)"

    def score(self, group, ctx):
        """Per consumer, the channel's atoms averaged; then the largest over all the consumers of
        the channel, whichever space they read (a residual stream's consumers included)."""
        per_consumer = [
            atoms_to_channels(group, {space: running})
            for space, stats in activation_stats(ctx).items()
            if space in group.channel_of
            for running in stats.sensitivity.values()
        ]
        return np.max(per_consumer, axis=0)


@register
class Wanda(Criterion):
    """Wanda for structured pruning (Sun et al., "A Simple and Effective Pruning Approach for LLMs";
    the channel form of FLAP / Wanda-sp): a channel that layer A writes and layer B reads scores
    Σ_i |W_B[i, j]| · ‖x_j‖₂ — the L1 norm of B's weight column j times the L2 norm, over every
    calibration token (samples × positions), of the activation x_j entering B. A channel read by
    several consumers (q/k/v reading one input) sums their products; a channel of several atoms
    (an attention head) averages its atoms' scores; each probed space is divided by its mean, as
    every criterion's scores are (see `atoms_to_channels`)."""

    name = "wanda"
    description = "Σ_i |W[i, j]| · ‖x_j‖₂ of the layer reading the channel, over the calibration tokens (Wanda)"
    needs_data = True

    def score(self, group, ctx):
        from onnxprune.measure.gated import find_probes

        stats = activation_stats(ctx)
        _, view, _ = ctx.data_inputs()
        per_space: dict = {}
        for probe in find_probes([group], view):
            columns = np.abs(member_matrix(view.consts[probe.weight.space.tensor], probe.weight.space.axis)).sum(axis=1)
            norms = np.sqrt(stats[probe.space].total_sq)
            per_space[probe.space] = per_space.get(probe.space, 0.0) + columns * norms
        return atoms_to_channels(group, per_space)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis: the last axis of [N, K], axis 1 otherwise."""
    axis = -1 if logits.ndim == 2 else 1
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def _per_sample(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).mean(axis=1)


class EffectCriterion(Criterion):
    """Gates one channel at a time and accumulates a per-sample effect on the first output.

    Scored stacked (`criteria.stacked`: several channels per ONNX Runtime call, only the nodes the
    group's gates reach re-run) where the graph allows it, else one call per channel; `modes` in
    the context's cache (key `effect_modes:<name>`) says which, per group (and a debug line of the
    `onnxprune.criteria.activation` logger says why a group is not stacked)."""

    needs_data = True
    gate_values: tuple[float, ...] = (0.0,)

    def effect(self, reference: np.ndarray, gated: list[np.ndarray], labels) -> np.ndarray:
        """Per-sample effect of gating a channel, from the reference and gated outputs."""
        return np.zeros(reference.shape[0])

    def score(self, group, ctx):
        return ctx.cached(f"effect:{self.name}", lambda: self.all_scores(ctx))[group.id]

    def all_scores(self, ctx: ScoringContext) -> dict[str, np.ndarray]:
        """Scores of every prunable group: stacked where possible, else one call per channel."""
        return self.stacked_scores(ctx)

    def stacked_scores(self, ctx: ScoringContext) -> dict[str, np.ndarray]:
        """Scores with several gated variants per call (groups that cannot be stacked: one call
        per channel); per group the mode lands in `ctx.cache["effect_modes:<name>"]`."""
        from onnxprune.criteria.stacked import StackedGroup

        model, view, data = ctx.data_inputs()
        modes = ctx.cache.setdefault(f"effect_modes:{self.name}", {})
        scores, unstacked = {}, []
        for group in (g for g in ctx.groups if g.prunable):
            scorer = StackedGroup.build(model, view, group)
            if isinstance(scorer, str):
                LOG.debug("%s: group %s scored one channel per call: %s", self.name, group.id, scorer)
                modes[group.id] = f"per channel ({scorer})"
                unstacked.append(group)
                continue
            total = np.zeros(group.channels)
            for feeds, labels in data.batches():
                total += scorer.batch_sums(feeds, labels, self.effect, self.gate_values)
                if ctx.progress:
                    ctx.progress()
            scores[group.id] = total / data.samples
            modes[group.id] = f"stacked ({scorer.variants_per_call} variants per call)"
        if unstacked:
            scores.update(self.per_channel_scores(ctx, unstacked))
        return scores

    def per_channel_scores(self, ctx: ScoringContext, groups=None) -> dict[str, np.ndarray]:
        """Scores of `groups` (default: every prunable group), one ONNX Runtime call per channel
        and gate value on the whole gated model."""
        from onnxprune.measure.gated import GatedModel

        onnx_model, view, data = ctx.data_inputs()
        model = GatedModel(onnx_model, ctx.groups, view)
        groups = [g for g in ctx.groups if g.prunable] if groups is None else groups
        sums = {g.id: np.zeros(g.channels) for g in groups}
        for feeds, labels in data.batches():
            reference = next(iter(model.run(feeds).values()))
            for group in groups:
                for channel in range(group.channels):
                    outputs = [
                        next(iter(model.run(feeds, {group.id: _gate(group.channels, channel, v)}).values()))
                        for v in self.gate_values
                    ]
                    sums[group.id][channel] += self.effect(reference, outputs, labels).sum()
            if ctx.progress:
                ctx.progress()
        return {gid: total / data.samples for gid, total in sums.items()}


def _gate(channels: int, channel: int, value: float) -> np.ndarray:
    gate = np.ones(channels, np.float32)
    gate[channel] = value
    return gate


@register
class KL(EffectCriterion):
    """KL divergence of the output distribution when the channel is masked (Luo & Wu)."""

    name = "kl"
    description = "KL(original || channel masked) of the output distribution"

    def effect(self, reference, gated, labels):
        p, q = softmax(reference.astype(np.float64)), softmax(gated[0].astype(np.float64))
        axis = -1 if p.ndim == 2 else 1
        kl = np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=axis)
        return _per_sample(kl)


#: Relative step of the central finite difference of the Taylor criterion.
TAYLOR_STEP = 1e-2


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy (mean over positions for [N, K, ...] outputs)."""
    logp = np.log(np.maximum(softmax(logits.astype(np.float64)), 1e-300))
    picked = np.take_along_axis(logp, np.expand_dims(targets, 1), axis=1).squeeze(1)
    return -_per_sample(picked)


@register
class Taylor(EffectCriterion):
    """First-order Taylor (Molchanov et al.): |sum over positions of activation x gradient| of the
    loss, per sample, averaged. The gradient-activation product is the derivative of the loss
    along the channel's own gate: by autograd when torch is installed (`criteria.autograd`, one
    forward and one backward pass per batch), else by a central finite difference (gates
    1 +- 1e-2); the loss is the cross-entropy with the labels, or with the unpruned model's
    predictions."""

    name = "taylor"
    description = "|activation x gradient| of the loss (autograd with torch, else central finite difference on a gate)"
    gate_values = (1.0 + TAYLOR_STEP, 1.0 - TAYLOR_STEP)

    def all_scores(self, ctx):
        """By autograd when torch is installed and the graph allows (`criteria.autograd`: one
        forward and one backward pass per batch), else by finite differences."""
        from onnxprune.criteria.autograd import taylor_scores

        scores = taylor_scores(ctx)
        if scores is not None:
            ctx.cache.setdefault(f"effect_modes:{self.name}", {}).update(dict.fromkeys(scores, "autograd"))
            return scores
        return self.finite_difference_scores(ctx)

    def finite_difference_scores(self, ctx):
        """The central finite difference on every channel's gate (stacked where possible)."""
        return self.stacked_scores(ctx)

    def effect(self, reference, gated, labels):
        axis = -1 if reference.ndim == 2 else 1
        targets = labels if labels is not None and reference.ndim == 2 else reference.argmax(axis=axis)
        up, down = (cross_entropy(out, targets) for out in gated)
        return np.abs((up - down) / (2 * TAYLOR_STEP))
