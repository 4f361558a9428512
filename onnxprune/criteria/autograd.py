"""The Taylor criterion by autograd (the `torch` extra): one forward and one backward pass per batch.

The finite-difference Taylor score of a channel is mean_n |d loss_n / d g_c| at g = 1, where g_c
multiplies the channel at every probe of its group and loss_n is sample n's cross-entropy (with
its label, or with the unpruned model's prediction). Here the model gets per-sample gates
(`criteria.sample_gates`), is converted with `onnxprune.torch` (`OnnxModule`, weights frozen),
and the gradient of sum_n loss_n with respect to the gates gives every d loss_n / d gate[n, atom]
at once; a channel's derivative is the sum over its atoms (the chain rule through the shared
gate). `taylor_scores` returns None when this path cannot be taken (no torch, an op without a
torch translation, a probe that does not carry the batch on axis 0): finite differences then.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from onnxprune.criteria.base import ScoringContext
from onnxprune.criteria.sample_gates import (
    SampleGatedModel,
    batch_axis_ready,
    batch_dim,
    channel_rows,
    sample_gated_model,
)
from onnxprune.errors import InputError
from onnxprune.measure.gated import GatedModel

LOG = logging.getLogger(__name__)


def torch_available() -> bool:
    """Whether torch can be imported (the `torch` extra)."""
    return importlib.util.find_spec("torch") is not None


def taylor_scores(ctx: ScoringContext) -> dict[str, np.ndarray] | None:
    """Taylor scores of every prunable group by autograd, or None (see the module docstring)."""
    if not torch_available():
        LOG.debug("taylor: torch is not installed; finite differences")
        return None
    model, view, data = ctx.data_inputs()
    gated = sample_gated_model(model, ctx.groups, view, batch_dim(view))
    if batch_axis_ready(view, [model.graph.output[0].name], symbolic=False) is not None:
        LOG.debug("taylor: the output does not carry the batch on axis 0; finite differences")
        return None
    if gated is None:
        LOG.debug("taylor: a probe does not carry the batch on axis 0; finite differences")
        return None
    from onnxprune.torch.convert import OnnxModule

    try:
        module = OnnxModule(gated.model)
    except InputError as exc:
        LOG.debug("taylor: no torch module (%s); finite differences", exc)
        return None
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    groups = {g.id: g for g in ctx.groups if g.prunable}
    sums = {gid: np.zeros(g.channels) for gid, g in groups.items()}
    for feeds, labels in data.batches():
        for gid, derivative in batch_derivatives(module, gated, groups, feeds, labels).items():
            sums[gid] += np.abs(derivative).sum(axis=0)
        if ctx.progress:
            ctx.progress()
    return {gid: total / data.samples for gid, total in sums.items()}


def batch_derivatives(module, gated: SampleGatedModel, groups: dict, feeds: dict, labels) -> dict[str, np.ndarray]:
    """d loss_n / d g_c of one batch per group, [samples, channels]."""
    import torch

    rows = len(next(iter(feeds.values())))
    gates = {
        name: torch.from_numpy(value).requires_grad_(True)
        for name, value in gated.gate_feeds(groups, {gid: channel_rows(g, rows) for gid, g in groups.items()}).items()
    }
    inputs = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
    inputs.update(gates)
    output = module(*(inputs[name] for name in module.input_names))
    first = output[0] if isinstance(output, tuple) else output
    loss = cross_entropy_sum(first.double(), None if labels is None else torch.from_numpy(np.asarray(labels)))
    names = list(gates)
    grads = torch.autograd.grad(loss, [gates[n] for n in names], allow_unused=True)
    derivatives = {gid: np.zeros((rows, g.channels)) for gid, g in groups.items()}
    for space in gated.spaces:
        grad = grads[names.index(GatedModel.gate_name(space))]
        if grad is None:
            continue
        per_atom = grad.detach().double().reshape(rows, -1).numpy()
        group = groups[gated.space_group[space]]
        atoms = group.channel_of[space]
        one_hot = np.zeros((len(atoms), group.channels))
        one_hot[np.arange(len(atoms)), atoms] = 1.0
        derivatives[group.id] += per_atom @ one_hot
    return derivatives


def cross_entropy_sum(logits, labels):
    """Sum over samples of `activation.cross_entropy` in torch: the class axis is the last of a
    [N, K] output, axis 1 otherwise; targets are the labels for a [N, K] output with labels, else
    the output's own argmax; a sample's loss is the mean over positions."""
    import torch

    axis = -1 if logits.dim() == 2 else 1
    logp = torch.log_softmax(logits, dim=axis)
    if labels is not None and logits.dim() == 2:
        targets = labels.long()
    else:
        targets = logits.detach().argmax(dim=axis)
    picked = torch.gather(logp, 1, targets.unsqueeze(1)).squeeze(1)
    return -picked.reshape(picked.shape[0], -1).mean(dim=1).sum()
