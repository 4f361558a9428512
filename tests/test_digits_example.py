"""The committed demo model examples/digits/digits_cnn.onnx: format and accuracy."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort

DIGITS = pathlib.Path(__file__).resolve().parents[1] / "examples" / "digits"
sys.path.insert(0, str(DIGITS))
from data import load_digits_split  # noqa: E402


def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits_split(), load_digits_split()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    x_train, y_train, x_test, y_test = a
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.bincount(y_test).min() >= 43  # stratified: 43-46 per class


def test_digits_onnx_model():
    path = DIGITS / "digits_cnn.onnx"
    model = onnx.load(str(path))
    assert path.stat().st_size < 2_000_000
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert any(n.op_type == "Add" for n in model.graph.node)  # residual coupling
    _, _, x_test, y_test = load_digits_split()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x_test})[0]
    assert logits.shape == (450, 10)
    assert (logits.argmax(1) == y_test).mean() >= 0.97


def test_demo_script_end_to_end(tmp_path):
    """`make demo` runs examples/digits/demo.py: it must finish, verify, and recover accuracy."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "digits" / "demo.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verified at input=2x1x8x8 (static, dynamic batch): matches the masked reference" in done.stdout
    accuracies = [float(a) for a in re.findall(r"([0-9.]+)%", done.stdout.splitlines()[-1])]
    unpruned, pruned, recovered = accuracies[:3]
    assert unpruned > 97 and recovered > 90 and recovered > pruned
    assert (tmp_path / "digits_cnn.pruned.onnx").exists()
