"""Data and error helpers shared by the recovery tests (reconstruction, fine-tuning)."""

from __future__ import annotations

import numpy as np

from onnxprune.model.runtime import run_model


def correlated_inputs(n: int, seed: int) -> np.ndarray:
    """Inputs x[N,4,8,8] with correlated channels (as images have)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 2, 8, 8))
    mix = np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0], [0.5, -0.5]])
    return (np.einsum("cb,nbhw->nchw", mix, base) + 0.3 * rng.standard_normal((n, 4, 8, 8))).astype(np.float32)


def output_error(model, pruned, x) -> float:
    """Relative L2 distance of the pruned model's first output from the model's on input `x`."""
    name = model.graph.output[0].name
    reference = run_model(model, {"x": x})[name].astype(np.float64)
    got = run_model(pruned, {"x": x})[name].astype(np.float64)
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def brightest_channel_samples(n: int, seed: int, classes: int = 3):
    """Images x[N,3,8,8] whose class is the brightest colour channel (translation- and
    flip-invariant), and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    x[np.arange(n), y] += 1.5
    return x, y.astype(np.int64)


def tiny_cnn(width: int, classes: int, *, batchnorm: bool = False, reshape: bool = False):
    """Conv(3→width)-[BN]-ReLU-Conv(width→width)-ReLU-GAP-flatten-Linear(width→classes), the tiny
    CNN of the recovery tests (a torch module; needs torch). The flatten is ``nn.Flatten`` (an ONNX
    Flatten), or with `reshape` ``x.reshape(x.shape[0], -1)`` as the CIFAR ResNets do (a Reshape
    whose target is built from Shape at run time). BN draws no random numbers, so the same seed
    gives the same convolutions with or without it."""
    import torch

    nn = torch.nn

    class FlattenByReshape(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1)

    first = [nn.Conv2d(3, width, 3, padding=1)] + ([nn.BatchNorm2d(width)] if batchnorm else [])
    return nn.Sequential(
        *first,
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        FlattenByReshape() if reshape else nn.Flatten(),
        nn.Linear(width, classes),
    )


def fitted(net, x: np.ndarray, y: np.ndarray, steps: int):
    """`net` after `steps` full-batch Adam steps (lr 0.01) of cross-entropy on (x, y): a trained
    teacher for the distillation tests. Needs torch."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net
