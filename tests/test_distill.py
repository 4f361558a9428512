"""Label-free distillation recovery (--recover kd) on a tiny CNN: it never returns a worse model,
it raises the agreement with the teacher, --recover-steps bounds it, the CLI wires it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from recovery_data import fitted, tiny_cnn

torch = pytest.importorskip("torch")

from onnxprune.api import prune  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.measure.calibration import load_calibration  # noqa: E402
from onnxprune.recover.distill import DistillOptions, agreement, distill, split_samples  # noqa: E402
from onnxprune.torch import export_onnx  # noqa: E402

CLASSES = 4


def _samples(n: int, seed: int):
    """Images whose class is the brightest of four colour patterns."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    x[np.arange(n), y % 3] += (1.0 + (y // 3))[:, None, None]
    return x, y


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    net = fitted(tiny_cnn(16, CLASSES), *_samples(256, 1), steps=80)
    teacher = root / "teacher.onnx"
    export_onnx(net.eval(), torch.zeros(1, 3, 8, 8), teacher)
    calib = root / "calib.npz"
    np.savez(calib, x=_samples(160, 2)[0])  # no labels
    pruned = prune(teacher, "l1", 0.6).model
    return {"root": root, "teacher": teacher, "calib": calib, "pruned": pruned}


def _run(setup, **options):
    data = load_calibration(setup["calib"], setup["pruned"], batch_size=32)
    return distill(onnx.load(str(setup["teacher"])), setup["pruned"], data, DistillOptions(**options))


def test_kd_raises_the_agreement_and_keeps_the_architecture(setup):
    result = _run(setup, seconds=None, steps=60, lr=0.05, evaluations=4)
    assert result.applied
    assert result.after["error"] < result.before["error"]
    assert result.after["agreement"] >= result.before["agreement"]
    assert result.steps == 60 and result.best_step > 0
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in setup["pruned"].graph.node]
    shapes = {i.name: list(i.dims) for i in setup["pruned"].graph.initializer}
    assert {i.name: list(i.dims) for i in result.model.graph.initializer} == shapes
    assert [e["step"] for e in result.curve][0] == 0 and len(result.curve) >= 3


def test_kd_never_returns_a_worse_model(setup):
    result = _run(setup, seconds=None, steps=8, lr=1e4, evaluations=4)  # a step this large wrecks the model
    assert not result.applied
    assert result.model is setup["pruned"]
    assert result.after == result.before
    assert "kept" in result.to_dict()["stopped"]
    assert max(e["error"] for e in result.curve[1:]) > 10 * result.before["error"]  # training did hurt


def test_recover_steps_bounds_the_stage_and_the_report_records_it(setup, tmp_path):
    result = prune(setup["teacher"], "l1", 0.6, calib=setup["calib"], recover="kd", recover_steps=5)
    kd = result.report["distillation"]
    assert kd["steps"] == 5
    assert kd["budget"] == {"seconds": None, "steps": 5}
    assert kd["held_out_samples"] == 32 and kd["train_samples"] == 128
    assert kd["curve"][-1]["step"] == 5
    if kd["applied"]:
        assert result.plan["recovered_distillation"]["steps"] == 5


def test_agreement_and_split():
    t = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert agreement(t, t) == {"error": 0.0, "agreement": 1.0, "kl": pytest.approx(0.0)}
    assert agreement(2 * t, t)["error"] == pytest.approx(1.0)
    assert agreement(t[:, ::-1], t)["agreement"] == 0.0
    train, held = split_samples(500, 0)
    assert len(held) == 100 and len(train) == 400 and not set(train) & set(held)


def test_cli_recover_needs_calib_and_prints_the_summary(setup, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main([str(setup["teacher"]), "-o", str(out), "--recover", "kd", "--recover-steps", "2"]) == 2
    assert "--calib" in capsys.readouterr().err
    code = main(
        [
            str(setup["teacher"]),
            "-o",
            str(out),
            "--calib",
            str(setup["calib"]),
            "--recover",
            "kd",
            "--recover-steps",
            "3",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "kd step" in text and "distillation (kd, no labels): 3 steps" in text


def test_mix_batch_blends_images_of_the_batch():
    """CutMix pastes one box of another image of the batch (every pixel comes from one of the two
    images); mixup blends each image with another one, convexly; "none" returns the batch."""
    import torch

    from onnxprune.recover.distill import mix_batch

    x = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 2, 8, 8).contiguous()
    g = torch.Generator().manual_seed(0)
    assert mix_batch(x, "none", g) is x
    cut = mix_batch(x, "cutmix", g)
    assert cut.shape == x.shape
    for i in range(4):  # per image: its own value outside the box, one image's value inside
        values = set(cut[i].unique().tolist())
        assert len(values) <= 2 and values <= {0.0, 1.0, 2.0, 3.0}
    assert (cut != x).any()
    mixed = mix_batch(x, "mixup", g)
    assert torch.all(mixed >= 0) and torch.all(mixed <= 3)
    assert torch.allclose(mixed, mixed[:, :1, :1, :1].expand_as(mixed))  # one weight per image


def test_kl_loss_and_no_mixing_still_recover(setup):
    result = _run(setup, seconds=None, steps=40, lr=0.05, evaluations=4, loss="kl", mix="none")
    assert result.applied and result.after["error"] < result.before["error"]
