"""`onnxprune prune … --finetune-data`: prune → reconstruct → fine-tune → check → bench in one command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from onnxprune.cli import main  # noqa: E402
from onnxprune.model.runtime import run_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE))
    from data import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split()
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "train.npz", input=x_train, y=y_train)
    np.savez(folder / "val.npz", input=x_test, y=y_test)
    return folder, x_test, y_test


def test_prune_reconstruct_finetune_in_one_command(digits, tmp_path, capsys):
    folder, x_test, y_test = digits
    out, report = tmp_path / "chain.onnx", tmp_path / "r.json"
    code = main(
        [
            str(EXAMPLE / "digits_cnn.onnx"),
            "--calib",
            str(folder / "train.npz"),
            "--reconstruct",
            "--finetune-data",
            str(folder / "train.npz"),
            "--val",
            str(folder / "val.npz"),
            "--finetune-epochs",
            "2",
            "--no-augment",
            "-o",
            str(out),
            "--report",
            str(report),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "fine-tuned 2 epochs" in printed and "latency" in printed
    data = json.loads(report.read_text())
    assert len(data["finetune"]["history"]) == 2 and data["finetune"]["applied"]
    assert data["latency"]["before_ms"] > 0 and data["latency"]["after_ms"] > 0
    logits = run_model(onnx.load(out), {"input": x_test})["logits"]
    assert np.mean(logits.argmax(axis=1) == y_test) >= data["finetune"]["before"]["val_top1"]
    plan = json.loads(out.with_name("chain.plan.json").read_text())
    assert plan["recovered_finetune"]["epochs"] == 2


def test_finetune_data_without_labels_is_an_input_error(digits, tmp_path, capsys):
    folder, x_test, _ = digits
    np.savez(tmp_path / "nolabels.npz", input=x_test)
    code = main(
        [
            str(EXAMPLE / "digits_cnn.onnx"),
            "--finetune-data",
            str(tmp_path / "nolabels.npz"),
            "-o",
            str(tmp_path / "o.onnx"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "o.onnx").exists()
