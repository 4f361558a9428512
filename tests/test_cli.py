"""The command line: the happy path, and every bad input ends in one line on stderr, exit 2,
no output file, and an untouched input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli, sha
from graphs import GraphBuilder, conv_chain

from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model


@pytest.fixture()
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    return path


def test_prune_writes_model_plan_and_report(tiny, capsys, tmp_path):
    before = sha(tiny)
    code, out, _ = run_cli(capsys, tiny, "--ratio", "0.5", "--report", tmp_path / "r.json")
    assert code == 0 and sha(tiny) == before
    output, plan = tmp_path / "tiny.pruned.onnx", tmp_path / "tiny.pruned.plan.json"
    assert output.exists() and plan.exists()
    plan_doc = json.loads(plan.read_text())
    assert plan_doc["format"] == "onnxprune-plan/1" and plan_doc["input_sha256"] == before
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["after"]["macs"] < report["before"]["macs"]
    (group,) = [g for g in report["groups"] if g["frozen"] is None]
    assert group["macs_after"] < group["macs"] and group["params_after"] == group["params"] // 2
    assert "verified" in out and "MACs" in out
    onnx.checker.check_model(onnx.load(output), full_check=True)


def test_plan_weights_are_exact_slices_of_the_input(tiny, capsys, tmp_path):
    run_cli(capsys, tiny, "--criterion", "l2", "-o", tmp_path / "out.onnx", "--plan", tmp_path / "p.json")
    plan = json.loads((tmp_path / "p.json").read_text())
    source = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(tiny).graph.initializer}
    pruned = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert plan["weights"]
    for name, entry in plan["weights"].items():
        value = source[name]
        assert list(value.shape) == entry["shape"]
        index = [np.array(entry["kept"].get(str(a), range(n))) for a, n in enumerate(value.shape)]
        np.testing.assert_array_equal(pruned[name], value[np.ix_(*index)])


def test_ratio_zero_keeps_the_outputs(tiny, capsys, tmp_path):
    out = tmp_path / "same.onnx"
    assert run_cli(capsys, tiny, "--ratio", "0", "-o", out)[0] == 0
    feeds = random_inputs(onnx.load(tiny), seed=5)
    a, b = run_model(onnx.load(tiny), feeds), run_model(onnx.load(out), feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_analyze_and_ops_print_tables(tiny, capsys):
    code, out, _ = run_cli(capsys, "analyze", tiny)
    assert code == 0 and "prunable" in out and "reaches graph input 'x'" in out
    code, out, _ = run_cli(capsys, "analyze", tiny, "--json")
    rows = json.loads(out)["groups"]
    assert code == 0 and [r["channels"] for r in rows if r["frozen"] is None] == [8]
    code, out, _ = run_cli(capsys, "ops")
    assert code == 0 and "Conv" in out and "BatchNormalization" in out


def write_garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    return path


def write_truncated(tmp_path: Path, tiny: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(tiny.read_bytes()[:200])
    return path


def write_unprunable(tmp_path: Path) -> Path:
    g = GraphBuilder()
    path = tmp_path / "single.onnx"
    onnx.save(g.model(g.conv("x", 4, 3)), path)
    return path


BAD_INPUTS = {
    "missing file": (lambda tmp, tiny: [tmp / "nope.onnx"], "no such file"),
    "not onnx": (lambda tmp, tiny: [write_garbage(tmp)], "not a readable ONNX model"),
    "truncated": (lambda tmp, tiny: [write_truncated(tmp, tiny)], "ONNX"),
    "unknown criterion": (lambda tmp, tiny: [tiny, "--criterion", "magic"], "magic"),
    "ratio 1.5": (lambda tmp, tiny: [tiny, "--ratio", "1.5"], "--ratio must be in [0, 1)"),
    "negative ratio": (lambda tmp, tiny: [tiny, "--ratio", "-0.1"], "--ratio must be in [0, 1)"),
    "ratio not a number": (lambda tmp, tiny: [tiny, "--ratio", "half"], "--ratio"),
    "output is input": (lambda tmp, tiny: [tiny, "-o", tiny], "is the input"),
    "nothing prunable": (lambda tmp, tiny: [write_unprunable(tmp)], "no prunable channel group"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tiny, tmp_path, capsys):
    make_args, expected = BAD_INPUTS[case]
    args = make_args(tmp_path, tiny)
    hashes = {p: sha(p) for p in tmp_path.glob("*.onnx")}
    listing = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and expected in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert {p: sha(p) for p in hashes} == hashes


def test_console_script_runs_end_to_end(tiny, tmp_path):
    script = shutil.which("onnxprune") or str(Path(sys.executable).with_name("onnxprune"))
    done = subprocess.run(
        [script, str(tiny), "--ratio", "0.25", "-o", str(tmp_path / "o.onnx")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.onnx").exists()
    bad = subprocess.run([script, str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_help_lists_the_commands_in_registry_order(capsys):
    code, out, _ = run_cli(capsys, "--help")
    block = out.split("  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split()[0] for line in block.splitlines() if line.startswith("    ") and line[4] != " "]
    assert code == 0 and listed == ["prune", "analyze", "sensitivity", "finetune", "check", "bench", "profile", "ops"]


@pytest.mark.parametrize(
    "parameter, message, line",
    [
        ("ridge", "{ridge} must be a finite number >= 0, got -1.0", "--ridge must be a finite number >= 0, got -1.0"),
        ("round_ep", "{round_ep} x: not available", "--ep x: not available"),
        ("epochs", "{epochs} must be at least 1, got 0", "--finetune-epochs must be at least 1, got 0"),
        ("batch_size", "--batch-size 3 is the global batch", "--batch-size 3 is the global batch"),
        ("calib", "--calib-samples needs {calib}", "--calib-samples needs --calib"),
        ("calib", "--data x.npz: no such file or folder", "--data x.npz: no such file or folder"),
        (None, "no prunable channel group", "no prunable channel group"),
    ],
)
def test_a_library_error_names_the_option(tiny, capsys, monkeypatch, parameter, message, line):
    """The library names keyword arguments as {placeholders}; the CLI writes them as the command's flags."""
    from onnxprune.commands import prune as prune_command
    from onnxprune.errors import InputError

    def fail(*args, **kwargs):
        raise InputError(message, parameter=parameter)

    monkeypatch.setattr(prune_command, "run_prune", fail)
    code, _, err = run_cli(capsys, tiny)
    assert code == 2 and err == f"onnxprune: error: {line}\n"
