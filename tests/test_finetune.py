"""onnxprune finetune: training loop, export, resume, distillation and CLI errors on a tiny model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from recovery_data import brightest_channel_samples, fitted, tiny_cnn

torch = pytest.importorskip("torch")

from onnxprune.api import prune  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.recover.finetune import finetune  # noqa: E402
from onnxprune.torch import export_onnx  # noqa: E402

CLASSES = 3


def _tiny_net():
    return tiny_cnn(8, CLASSES, batchnorm=True)


def _samples(n: int, seed: int):
    return brightest_channel_samples(n, seed, CLASSES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    net = _tiny_net().eval()
    original = root / "original.onnx"
    export_onnx(net, torch.zeros(1, 3, 8, 8), original)
    pruned = root / "pruned.onnx"
    result = prune(original, "l1", 0.5)
    onnx.save(result.model, str(pruned))
    train, val = root / "train.npz", root / "val.npz"
    x, y = _samples(384, 1)
    np.savez(train, x=x, y=y)
    teacher_net = fitted(_tiny_net(), x, y, steps=60)  # a trained teacher for distillation
    teacher = root / "teacher.onnx"
    export_onnx(teacher_net.eval(), torch.zeros(1, 3, 8, 8), teacher)
    x, y = _samples(192, 2)
    np.savez(val, x=x, y=y)
    return {"root": root, "original": original, "teacher": teacher, "pruned": pruned, "train": train, "val": val}


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_improves_and_export_matches(setup, tmp_path):
    out = tmp_path / "tuned.onnx"
    lines = []
    result = finetune(
        setup["pruned"],
        setup["train"],
        epochs=3,
        val=setup["val"],
        optimizer="adamw",
        lr=0.02,
        batch_size=32,
        seed=0,
        device="cpu",
        output=out,
        log=lines.append,
    )
    losses = [h["train_loss"] for h in result.history]
    print("loss", losses, "val before", result.initial, "after", result.history[-1])
    assert len(result.history) == 3 and len(lines) == 4
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_top1"] > result.initial["val_top1"] + 0.2
    assert result.history[-1]["val_loss"] < result.initial["val_loss"]
    # the written model runs in ORT and computes what the torch module computes
    x, _ = _samples(16, 3)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = result.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert onnx.load(str(out)).graph.output[0].name == result.model.graph.output[0].name


def test_resume_equals_uninterrupted(setup, tmp_path):
    common = dict(epochs=2, lr=0.05, batch_size=64, seed=3, device="cpu")
    straight = finetune(setup["pruned"], setup["train"], checkpoint_dir=tmp_path / "a", **common)

    def stop(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(setup["pruned"], setup["train"], checkpoint_dir=tmp_path / "b", on_epoch_end=stop, **common)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = finetune(setup["pruned"], setup["train"], checkpoint_dir=tmp_path / "b", resume=True, **common)
    a, b = _weights(straight.module), _weights(resumed.module)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_distillation_lowers_kd_loss(setup):
    result = finetune(
        setup["pruned"],
        setup["train"],
        epochs=2,
        teacher=setup["teacher"],
        kd_alpha=0.9,
        kd_temperature=4.0,
        optimizer="adamw",
        lr=0.01,
        batch_size=32,
        seed=0,
        device="cpu",
    )
    kd = [h["train_kd"] for h in result.history]
    print("kd", kd)
    assert kd[-1] < kd[0]


def test_cli_finetune(setup, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    code = main(
        [
            "finetune",
            str(setup["pruned"]),
            "--data",
            str(setup["train"]),
            "--val",
            str(setup["val"]),
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--batch-size",
            "64",
            "-o",
            str(out),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.exists() and (tmp_path / "ck" / "last.pt").exists()
    assert "val top-1" in captured.out and "wrote" in captured.out


@pytest.mark.parametrize("case", ["no_data", "no_labels", "resume_without_checkpoint", "bad_epochs"])
def test_cli_errors(setup, tmp_path, capsys, case):
    args = ["finetune", str(setup["pruned"]), "-o", str(tmp_path / "o.onnx")]
    if case == "no_labels":
        np.savez(tmp_path / "x.npz", x=_samples(8, 0)[0])
        args += ["--data", str(tmp_path / "x.npz")]
    elif case == "resume_without_checkpoint":
        args += ["--data", str(setup["train"]), "--resume", "--checkpoint-dir", str(tmp_path / "none")]
    elif case == "bad_epochs":
        args += ["--data", str(setup["train"]), "--epochs", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxprune: error:")
    assert not (tmp_path / "o.onnx").exists()


def test_divergence_is_a_clear_error(setup, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main(
        [
            "finetune",
            str(setup["pruned"]),
            "--data",
            str(setup["train"]),
            "--lr",
            "1e8",
            "--clip-grad",
            "0",
            "--epochs",
            "1",
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 4
    assert len(err.strip().splitlines()) == 1 and "diverged" in err and "--lr" in err
    assert not out.exists()


def test_gradient_clipping_bounds_the_first_step(setup):
    """With --clip-grad c, one SGD step (no momentum yet, no decay) moves the weights by at most lr·c."""
    import onnx as onnx_

    before = {t.name: onnx_.numpy_helper.to_array(t) for t in onnx_.load(str(setup["pruned"])).graph.initializer}
    for clip in (0.05, 0.0):
        result = finetune(
            setup["pruned"],
            setup["train"],
            epochs=1,
            batch_size=384,
            lr=1.0,
            momentum=0.0,
            weight_decay=0.0,
            augment=False,
            clip_grad=clip,
        )
        moved = [p.detach().numpy() for p in result.module.parameters()]
        step = np.sqrt(sum(float(((m - b) ** 2).sum()) for m, b in zip(moved, before.values())))
        if clip:
            assert step <= 1.0 * clip * 1.0001
        else:
            assert step > 1.0 * 0.05 * 1.5
