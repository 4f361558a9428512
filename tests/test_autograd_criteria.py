"""The fast effect criteria agree with the one-call-per-channel ones on tiny models.

* `taylor` by autograd (`criteria.autograd`, one forward and one backward pass per batch) equals
  the central finite difference within 1e-3 relative on a smooth (tanh) model;
* `kl`, `head_mask` and finite-difference `taylor` stacked (`criteria.stacked`: several channel
  variants per ONNX Runtime call, only the nodes after the group's gates re-run) equal the
  per-channel scores; a graph with a constant batch in a Reshape falls back to one call per channel.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from zoo import export_onnx  # noqa: E402

from onnxprune.api import load_and_analyze  # noqa: E402
from onnxprune.criteria import autograd  # noqa: E402
from onnxprune.criteria.base import ScoringContext, get_criterion  # noqa: E402
from onnxprune.measure.calibration import load_calibration  # noqa: E402

SAMPLES = 10


class Smooth(nn.Module):
    """a = tanh(conv1 x); s = tanh(a + conv2 a); conv3 s -> GAP -> Flatten -> Gemm: a residual
    stream read in two spaces, an inner group, and a Gemm head."""

    def __init__(self, activation=torch.tanh):
        super().__init__()
        self.activation = activation
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(6, 5, 3, padding=1), nn.Linear(5, 4)

    def forward(self, x):
        a = self.activation(self.conv1(x))
        s = self.activation(a + self.conv2(a))
        return self.fc(torch.flatten(self.activation(self.conv3(s)).mean(dim=(2, 3)), 1))


class FixedBatch(Smooth):
    """Flattens with a constant batch (Reshape to [5, -1]): the batch axis cannot be stacked."""

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv3(a + self.conv2(a))).mean(dim=(2, 3)).reshape(5, -1))


def setup(tmp_path, module, labelled=False, batch_size=4):
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    path = export_onnx(module, (batch_size, 3, 5, 5), tmp_path / "model.onnx", dynamo=False)
    rng = np.random.default_rng(3)
    arrays = {"input": rng.standard_normal((SAMPLES, 3, 5, 5)).astype(np.float32)}
    if labelled:
        arrays["y"] = rng.integers(0, 4, SAMPLES)
    np.savez(tmp_path / "calib.npz", **arrays)
    analysis = load_and_analyze(path)
    data = load_calibration(tmp_path / "calib.npz", analysis.model, batch_size=batch_size)
    return lambda: ScoringContext(analysis.view.consts, analysis.groups, 0, analysis.model, analysis.view, data)


def assert_same(got, expected, rtol, atol=0.0):
    assert got.keys() == expected.keys() and got
    for gid in expected:
        scale = np.abs(expected[gid]).max()
        np.testing.assert_allclose(got[gid], expected[gid], rtol=rtol, atol=atol * scale, err_msg=gid)
        assert np.ptp(expected[gid]) > 0, "the case should tell the channels apart"


@pytest.mark.parametrize("labelled", [False, True])
def test_autograd_taylor_equals_finite_differences(tmp_path, labelled):
    ctx = setup(tmp_path, Smooth(), labelled)
    taylor = get_criterion("taylor")
    fast = taylor.all_scores(first := ctx())
    assert set(first.cache["effect_modes:taylor"].values()) == {"autograd"}
    assert_same(fast, taylor.per_channel_scores(ctx()), rtol=1e-3, atol=1e-3)


def test_taylor_without_torch_is_finite_differences(tmp_path, monkeypatch):
    ctx = setup(tmp_path, Smooth())
    monkeypatch.setattr(autograd, "torch_available", lambda: False)
    taylor = get_criterion("taylor")
    scores = taylor.all_scores(first := ctx())
    assert all(mode.startswith("stacked") for mode in first.cache["effect_modes:taylor"].values())
    # float32 rounding of the loss, divided by the step 2e-2
    assert_same(scores, taylor.per_channel_scores(ctx()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("criterion", ["kl", "head_mask"])
@pytest.mark.parametrize("activation", [torch.tanh, torch.relu], ids=["tanh", "relu"])
def test_stacked_equals_per_channel(tmp_path, criterion, activation):
    ctx = setup(tmp_path, Smooth(activation))
    scorer = get_criterion(criterion)
    stacked = scorer.stacked_scores(first := ctx())
    modes = first.cache[f"effect_modes:{criterion}"]
    assert modes and all(mode.startswith("stacked") for mode in modes.values()), modes
    assert_same(stacked, scorer.per_channel_scores(ctx()), rtol=1e-5, atol=1e-6)


def test_stacked_calls_hold_several_channels(tmp_path, monkeypatch):
    """With room for 3 variants a call (rows 15 / batch 5), the scores do not change."""
    from onnxprune.criteria import stacked

    ctx = setup(tmp_path, Smooth(), batch_size=5)
    kl = get_criterion("kl")
    wide = kl.stacked_scores(ctx())
    monkeypatch.setattr(stacked, "STACK_ROWS", 15)
    narrow = kl.stacked_scores(first := ctx())
    assert "3 variants" in next(iter(first.cache["effect_modes:kl"].values()))
    assert_same(narrow, wide, rtol=1e-6, atol=1e-7)


def test_constant_batch_falls_back_to_one_call_per_channel(tmp_path):
    ctx = setup(tmp_path, FixedBatch(), batch_size=5)
    kl = get_criterion("kl")
    scores = kl.all_scores(first := ctx())
    modes = first.cache["effect_modes:kl"]
    assert modes and all(mode.startswith("per channel") for mode in modes.values()), modes
    assert_same(scores, kl.per_channel_scores(ctx()), rtol=1e-9)
    taylor = get_criterion("taylor")
    np.testing.assert_equal(taylor.all_scores(ctx()), taylor.per_channel_scores(ctx()))
