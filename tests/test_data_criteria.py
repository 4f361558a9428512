"""Every data-driven criterion computed a second, independent way and compared with onnxprune.

Each tiny model is a torch module exported to ONNX (TorchScript exporter). onnxprune scores the
ONNX model with ONNX Runtime on calibration data from a .npz file; the reference is computed with
torch on the module itself: forward pre-hooks on the consumer layers capture what they read
(`reads`), `torch.linalg.matrix_rank` gives the HRank ranks, per-sample gates with autograd give
the Taylor derivative and masked channels with `F.kl_div` give the KL divergence.

Documented reductions checked here: a channel's per-atom values are averaged (Flatten blocks, and
the several spaces of a residual stream); `es` is the largest over the channel's consumers.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from graphs import GraphBuilder
from torch import nn
from zoo import export_onnx

from onnxprune.api import load_and_analyze, score_groups
from onnxprune.measure.calibration import load_calibration
from onnxprune.measure.gated import collect_stats, feature_map_ranks

SAMPLES = 12
STATISTICS = ("apoz", "mean_act", "std_act", "hrank", "es")
#: (rtol, atol relative to the largest reference score). ORT and torch agree to float32 rounding;
#: taylor is a central finite difference (step 1e-2) of a float32 loss; apoz/hrank count exactly.
TOLERANCE = {
    "apoz": (1e-12, 0),
    "hrank": (1e-12, 0),
    "mean_act": (1e-5, 1e-7),
    "std_act": (1e-5, 1e-7),
    "es": (1e-5, 1e-7),
    "kl": (1e-3, 1e-6),
    "taylor": (1e-2, 2e-3),
}


def init(module: nn.Module, seed: int, std: float = 0.4) -> nn.Module:
    """Weights large enough that logits spread (meaningful KL/Taylor) and ReLUs zero about half."""
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=std)
    return module.eval()


class Plain(nn.Module):
    """Conv(3->6)+bias -> ReLU -> Conv(6->4) -> GlobalAveragePool -> Flatten -> Gemm(4->5)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv2(torch.relu(self.conv1(x))), 1), 1))


class Residual(nn.Module):
    """a = ReLU(conv1 x); s = ReLU(a + conv2 a); conv3 s + conv4 s -> GAP -> Gemm. The stream's
    channels are read in two spaces (a by conv2, s by conv3 and conv4): three consumers."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.conv3, self.conv4 = nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        s = torch.relu(a + self.conv2(a))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv3(s) + self.conv4(s), 1), 1))


class FlattenHead(nn.Module):
    """Conv(3->4) -> ReLU -> Flatten -> Gemm(144->5): each channel is a block of 36 features."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 36, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


#: name -> (module, {prunable group: (consumer layers reading it, features per channel)})
MODELS = {
    "plain": (lambda: init(Plain(), 0), {"stream": (("conv2",), 1), "head": (("fc",), 1)}),
    "residual": (
        lambda: init(Residual(), 1, std=0.25),
        {"stream": (("conv2", "conv3", "conv4"), 1), "head": (("fc",), 1)},
    ),
    "flatten": (lambda: init(FlattenHead(), 2), {"stream": (("fc",), 36)}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch module, analysis, calibration .npz path, labels); exported once."""
    root = tmp_path_factory.mktemp("data_criteria")
    cache = {}

    def get(name):
        if name not in cache:
            module = MODELS[name][0]()
            path = export_onnx(module, (1, 3, 6, 6), root / f"{name}.onnx", dynamo=False)
            rng = np.random.default_rng(7)
            x = rng.standard_normal((SAMPLES, 3, 6, 6)).astype(np.float32)
            y = rng.integers(0, 5, SAMPLES)
            np.savez(root / f"{name}.npz", input=x)
            np.savez(root / f"{name}_xy.npz", x=x, y=y)
            cache[name] = module, load_and_analyze(path), root / f"{name}.npz", root / f"{name}_xy.npz"
        return cache[name]

    return get


def group_read_by(analysis, layer: str):
    """The prunable group whose consumer member is the weight `<layer>.weight`."""
    (group,) = [
        g
        for g in analysis.groups
        if g.prunable and any(m.role == "in" and m.space.tensor == f"{layer}.weight" for m in g.members)
    ]
    return group


def onnxprune_scores(analysis, criterion, calib, batch_size=5):
    data = load_calibration(calib, analysis.model, batch_size=batch_size)  # 12 samples: batches 5, 5, 2
    return score_groups(analysis, criterion, data=data)


@contextlib.contextmanager
def reads(module, layers, gate=None, block=1):
    """Capture what `layers` read; with `gate` ([N or 1, C]), multiply their input by it first
    (each gate value repeated over `block` features and over the spatial axes)."""
    seen = {}

    def hook(layer):
        def pre(_, args):
            a = args[0]
            seen.setdefault(layer, a)
            if gate is None:
                return None
            g = gate.repeat_interleave(block, dim=1)
            return (a * g.reshape(g.shape + (1,) * (a.ndim - 2)),)

        return pre

    handles = [getattr(module, name).register_forward_pre_hook(hook(name)) for name in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def reference_statistic(criterion, module, layer, a: torch.Tensor, block: int) -> np.ndarray:
    """One consumer's view of the channels: per atom (feature or channel map), averaged per channel."""
    per_atom = a.detach().double().numpy()
    atoms = per_atom.reshape(per_atom.shape[0], per_atom.shape[1], -1)  # [N, atoms, positions]
    if criterion == "apoz":
        value = 1 - (atoms == 0).mean(axis=(0, 2))
    elif criterion == "mean_act":
        value = np.abs(atoms).mean(axis=(0, 2))
    elif criterion == "std_act":
        value = atoms.std(axis=(0, 2))
    elif criterion == "hrank":
        value = (
            torch.linalg.matrix_rank(a.detach()).double().mean(0).numpy()
            if a.ndim == 4
            else (atoms != 0).any(axis=2).mean(axis=0)
        )
    else:  # es: max over samples of the column-norm-weighted share of |a|
        weight = getattr(module, layer).weight.detach().double().numpy()
        column_norms = np.abs(np.moveaxis(weight, 1, 0)).reshape(weight.shape[1], -1).sum(axis=1)
        contribution = np.abs(atoms).mean(axis=2) * column_norms
        value = (contribution / contribution.sum(axis=1, keepdims=True)).max(axis=0)
    return normalized(value).reshape(-1, block).mean(axis=1)  # atoms of a channel averaged


def normalized(per_atom) -> np.ndarray:
    """Per-atom values divided by their mean (onnxprune puts every space on the same scale)."""
    per_atom = np.asarray(per_atom, dtype=np.float64)
    return per_atom / per_atom.mean() if per_atom.mean() > 0 else per_atom


def reference(criterion, module, layers, block, calib):
    """Scores of the channels the `layers` read, computed with torch."""
    archive = np.load(calib)
    x = torch.from_numpy(archive["x"] if "x" in archive.files else archive["input"])
    labels = torch.from_numpy(archive["y"]) if "y" in archive.files else None
    if criterion in STATISTICS:
        with torch.no_grad(), reads(module, layers) as seen:
            module(x)
        # one value per space read (consumers of one tensor share it), averaged over the spaces;
        # es: the largest over the consumers
        per_layer = {layer: reference_statistic(criterion, module, layer, seen[layer], block) for layer in layers}
        if criterion == "es":
            return np.max(list(per_layer.values()), axis=0)
        spaces = {}
        for layer in layers:
            spaces.setdefault(seen[layer].data_ptr(), per_layer[layer])
        return np.mean(list(spaces.values()), axis=0)
    with torch.no_grad(), reads(module, layers[:1]) as seen:
        logits = module(x).double()
    channels = seen[layers[0]].shape[1] // block
    if criterion == "kl":
        scores = []
        for c in range(channels):
            gate = torch.ones(1, channels)
            gate[0, c] = 0
            with torch.no_grad(), reads(module, layers, gate, block):
                masked = module(x).double()
            kl = F.kl_div(F.log_softmax(masked, 1), F.softmax(logits, 1), reduction="none").sum(1)
            scores.append(kl.mean().item())
        return np.array(scores)
    # taylor: d loss_n / d gate[n, c] at gate 1, per sample n, by autograd
    targets = labels if labels is not None else logits.argmax(1)
    gate = torch.ones(x.shape[0], channels, dtype=torch.float64, requires_grad=True)
    with reads(module, layers, gate.float(), block):
        loss = F.cross_entropy(module(x).double(), targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, gate)
    return grad.abs().mean(0).numpy()


def check(criterion, exported, name, labelled=False):
    module, analysis, calib, calib_xy = exported(name)
    source = calib_xy if labelled else calib
    scores = onnxprune_scores(analysis, criterion, source)
    for layers, block in MODELS[name][1].values():
        expected = reference(criterion, module, layers, block, source)
        got = scores[group_read_by(analysis, layers[0]).id]
        rtol, atol = TOLERANCE[criterion]
        np.testing.assert_allclose(
            got,
            expected,
            rtol=rtol,
            atol=atol * np.abs(expected).max(),
            err_msg=f"{criterion} on {name}, channels read by {layers}",
        )
        if criterion not in ("apoz", "hrank"):  # no ReLU before the head: no zeros, rank 1
            assert np.ptp(expected) > 0, "the case should tell the channels apart"
    return scores


CRITERIA = ("apoz", "mean_act", "std_act", "hrank", "es", "kl", "taylor")


@pytest.mark.parametrize("criterion", CRITERIA)
def test_plain_model_matches_torch(criterion, exported):
    check(criterion, exported, "plain")


@pytest.mark.parametrize("criterion", CRITERIA)
def test_residual_stream_spaces_and_consumers(criterion, exported):
    """Statistics: mean over the two spaces (a, s); es: max over conv2, conv3, conv4; kl/taylor:
    the channel gated at all three reads at once (what pruning it does)."""
    check(criterion, exported, "residual")


@pytest.mark.parametrize("criterion", CRITERIA)
def test_channels_probed_after_flatten_are_feature_blocks(criterion, exported):
    check(criterion, exported, "flatten")


def test_taylor_uses_labels_when_given(exported):
    """With labels y the loss is the cross-entropy with them, not with the model's predictions."""
    with_labels = check("taylor", exported, "plain", labelled=True)
    _, analysis, calib, _ = exported("plain")
    without = onnxprune_scores(analysis, "taylor", calib)
    gid = group_read_by(analysis, "conv2").id
    assert not np.allclose(with_labels[gid], without[gid], rtol=0.05)


def test_batch_size_does_not_change_the_scores(exported):
    _, analysis, calib, _ = exported("residual")
    for criterion in CRITERIA:
        one = onnxprune_scores(analysis, criterion, calib, batch_size=SAMPLES)
        small = onnxprune_scores(analysis, criterion, calib, batch_size=1)
        rtol, atol = TOLERANCE[criterion]
        for gid in one:
            np.testing.assert_allclose(
                small[gid], one[gid], rtol=rtol, atol=atol * np.abs(one[gid]).max(), err_msg=criterion
            )


def test_hand_computed_statistics(tmp_path):
    """x -> Mul by a constant per channel (c0 = 0, c1 = -1, c2 = 2) -> ReLU -> Conv 1x1 with
    weight columns of L1 norm 1, 2, 3 -> GAP; x = 1 everywhere except sample 1 of channel 2 (a
    rank-1 map e_0 e_0^T): counted by hand."""
    g = GraphBuilder(shape=("N", 3, 3, 3))
    first = g.op("Conv", "x", g.const(np.diag([1.0, -1.0, 2.0]).astype(np.float32).reshape(3, 3, 1, 1)))
    relu = g.op("Relu", first)
    weight = np.array([[1, 2, 3], [0, 0, 0]], np.float32).reshape(2, 3, 1, 1)
    model = g.model(g.op("GlobalAveragePool", g.op("Conv", relu, g.const(weight))))
    x = np.ones((2, 3, 3, 3), np.float32)
    x[1, 2] = 0
    x[1, 2, 0, 0] = 1
    np.savez(tmp_path / "c.npz", x=x)
    analysis = load_and_analyze(model)
    data = load_calibration(tmp_path / "c.npz", analysis.model)
    (gid,) = [g.id for g in analysis.groups if g.prunable]
    score = {c: score_groups(analysis, c, data=data)[gid] for c in STATISTICS}
    # activations: channel 0 all 1, channel 1 all 0, channel 2: 2 everywhere, then 2 at one position
    # (each criterion's values are then divided by their mean over the space)
    np.testing.assert_allclose(score["apoz"], normalized([1, 0, 10 / 18]))
    np.testing.assert_allclose(score["mean_act"], normalized([1, 0, 20 / 18]))
    np.testing.assert_allclose(score["std_act"], normalized([0, 0, np.sqrt(40 / 18 - (20 / 18) ** 2)]))
    np.testing.assert_allclose(score["hrank"], normalized([1, 0, 1]))
    # es per sample: contributions (1*1, 0, 3*mean|a2|): sample 0 (1, 0, 6), sample 1 (1, 0, 3*2/9)
    np.testing.assert_allclose(
        score["es"], normalized([max(1 / 7, 1 / (1 + 2 / 3)), 0, max(6 / 7, (2 / 3) / (1 + 2 / 3))])
    )


def test_hrank_counts_maps_low_rank_up_to_float32_rounding(tmp_path):
    """A 1x1 conv of rank-1 inputs plus a bias gives rank-2 maps; computed in float32 they are
    rank 2 only up to rounding, which the rank must not count as full (torch.linalg.matrix_rank
    on the same float32 maps says 2)."""
    module = init(
        nn.Sequential(
            nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
        ),
        3,
    )
    path = export_onnx(module, (1, 3, 6, 6), tmp_path / "lowrank.onnx", dynamo=False)
    rng = np.random.default_rng(0)
    u, v, s = rng.standard_normal((8, 1, 6, 1)), rng.standard_normal((8, 1, 1, 6)), rng.standard_normal((8, 3, 1, 1))
    np.savez(tmp_path / "c.npz", x=(s * u * v).astype(np.float32))
    analysis = load_and_analyze(path)
    got = score_groups(analysis, "hrank", data=load_calibration(tmp_path / "c.npz", analysis.model))
    with torch.no_grad():
        maps = module[0](torch.from_numpy(np.load(tmp_path / "c.npz")["x"]))
    expected = torch.linalg.matrix_rank(maps).double().mean(0).numpy()
    np.testing.assert_array_equal(expected, 2)
    np.testing.assert_array_equal(got[group_read_by(analysis, "1").id], normalized(expected))


def test_feature_map_ranks_of_non_spatial_features_are_zero_or_one():
    a = np.array([[[0.0, 0.0], [0.0, 3.0]], [[1e-30, 0.0], [0.0, 0.0]]], np.float32)  # [N=2, C=2, 2]
    np.testing.assert_array_equal(feature_map_ranks(a), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(feature_map_ranks(np.array([[0.0, -2.0]])), [[0, 1]])


def test_statistics_are_incremental_and_memory_bounded(tmp_path):
    """20,000 samples (15 MB memory-mapped) stream through collect_stats with a peak of traced
    Python/numpy memory far below the file's size; the statistics equal one-shot numpy ones."""
    import tracemalloc

    g = GraphBuilder(shape=("N", 3, 8, 8))
    relu = g.op("Relu", g.conv("x", 3, 4))
    model = g.model(g.op("GlobalAveragePool", g.conv(relu, 4, 2)))
    count = 20_000
    x = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(count, 3, 8, 8))
    for start in range(0, count, 5000):
        x[start : start + 5000] = np.random.default_rng(start).standard_normal((5000, 3, 8, 8))
    x.flush()
    del x
    analysis = load_and_analyze(model)
    data = load_calibration(tmp_path / "big.npy", analysis.model, batch_size=256)
    assert data.samples == count and isinstance(data._arrays[0], np.memmap)
    tracemalloc.start()
    try:
        stats = collect_stats(analysis.model, analysis.groups, analysis.view, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"peak traced memory {peak / 1e6:.1f} MB for a 15 MB calibration file"
    (space_stats,) = stats.values()
    assert space_stats.samples == count and space_stats.elements[0] == count * 64
    assert 0 < space_stats.zeros.sum() < space_stats.elements.sum()


def test_data_criteria_need_calibration_data():
    from onnxprune import InputError

    analysis = load_and_analyze(_tiny())
    for criterion in CRITERIA:
        with pytest.raises(InputError, match=f"criterion {criterion} needs calibration data: add calib"):
            score_groups(analysis, criterion)


def _tiny() -> onnx.ModelProto:
    g = GraphBuilder()
    return g.model(g.op("GlobalAveragePool", g.conv(g.op("Relu", g.conv("x", 4, 6)), 6, 3)))
