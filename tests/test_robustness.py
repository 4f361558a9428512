"""Robustness: `onnxprune check`, byte-identical repeated runs, interruption during the write,
and models that try to read files outside their folder or smuggle code."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli, sha
from graphs import GraphBuilder, conv_chain
from onnx import TensorProto, numpy_helper


@pytest.fixture()
def pruned(tmp_path, capsys) -> tuple[Path, Path, Path]:
    """(original, pruned, plan) of a residual Conv/BN network pruned at 0.5."""

    def middle(g, t):
        return g.op("Add", t, g.op("Relu", g.bn(g.conv(t, 6, 6), 6)))

    original = tmp_path / "model.onnx"
    onnx.save(conv_chain(middle, seed=4), original)
    assert run_cli(capsys, original, "-o", tmp_path / "small.onnx")[0] == 0
    return original, tmp_path / "small.onnx", tmp_path / "small.plan.json"


# ---------------------------------------------------------------------------------- check


def test_check_passes_on_the_pruned_model(pruned, capsys):
    original, model, _ = pruned
    code, out, err = run_cli(capsys, "check", model, "--against", original, "--runs", "2")
    assert code == 0 and err == ""
    (line,) = out.strip().splitlines()
    assert line.startswith("PASS: small.onnx computes the masked original") and "over 2 batches" in line
    assert float(line.split("max relative difference ")[1].split()[0]) <= 1e-4


def test_check_fails_on_a_changed_weight(pruned, capsys, tmp_path):
    original, model, plan = pruned
    tampered = onnx.load(model)
    init = tampered.graph.initializer[0]
    value = numpy_helper.to_array(init).copy()
    value.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(value, init.name))
    onnx.save(tampered, tmp_path / "tampered.onnx")
    code, out, _ = run_cli(capsys, "check", tmp_path / "tampered.onnx", "--against", original, "--plan", plan)
    assert code == 3 and out.startswith("FAIL: tampered.onnx: 1 weights are not the plan's slices")


def test_check_fails_when_outputs_differ_though_weights_match(pruned, capsys, tmp_path):
    original, model, plan = pruned
    broken = onnx.load(model)
    relu = next(n for n in broken.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"  # same weights, different computation
    onnx.save(broken, tmp_path / "broken.onnx")
    code, out, _ = run_cli(capsys, "check", tmp_path / "broken.onnx", "--against", original, "--plan", plan)
    assert code == 3 and "differs from the masked original" in out
    assert float(out.split("max relative difference ")[1].split()[0]) > 1e-4


def test_check_with_calibration_data(pruned, capsys, tmp_path):
    original, model, _ = pruned
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((10, 4, 8, 8)).astype(np.float32))
    code, out, _ = run_cli(
        capsys,
        "check",
        model,
        "--against",
        original,
        "--runs",
        "1",
        "--calib",
        tmp_path / "calib.npz",
        "--calib-samples",
        "10",
    )
    assert code == 0 and "over 2 batches" in out


@pytest.mark.parametrize("case", ["other original", "missing plan", "not a plan", "missing model"])
def test_check_bad_input_is_one_line_exit_2(case, pruned, capsys, tmp_path):
    original, model, plan = pruned
    other = tmp_path / "other.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), seed=9), other)
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    args = {
        "other original": [model, "--against", other],
        "missing plan": [model, "--against", original, "--plan", tmp_path / "nope.json"],
        "not a plan": [model, "--against", original, "--plan", tmp_path / "junk.json"],
        "missing model": [tmp_path / "nope.onnx", "--against", original, "--plan", plan],
    }[case]
    code, out, err = run_cli(capsys, "check", *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("onnxprune: error:")


def damage(plan: dict, how: str) -> dict:
    pruned_group = next(g for g in plan["groups"] if g["frozen"] is None)
    weight = next(iter(plan["weights"].values()))
    if how == "groups not a list":
        plan["groups"] = {"g0": 1}
    elif how == "kept not integers":
        pruned_group["kept"] = ["a", "b"]
    elif how == "kept channel out of range":
        pruned_group["kept"] = [0, 999]
    elif how == "weight index out of range":
        weight["kept"][next(iter(weight["kept"]))] = [0, 10**6]
    elif how == "unknown group":
        pruned_group["id"] = "g999"
    return plan


@pytest.mark.parametrize(
    "how",
    [
        "groups not a list",
        "kept not integers",
        "kept channel out of range",
        "weight index out of range",
        "unknown group",
    ],
)
def test_check_damaged_plan_is_one_line_exit_2(how, pruned, capsys, tmp_path):
    original, model, plan = pruned
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(damage(json.loads(plan.read_text()), how)))
    code, out, err = run_cli(capsys, "check", model, "--against", original, "--plan", damaged)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("onnxprune: error:"), err


# ---------------------------------------------------------------------------- determinism


def test_same_command_twice_gives_identical_model_and_plan(tmp_path):
    """Two processes with different hash seeds: byte-identical model, plan and report."""

    def middle(g, t):
        a, b = g.conv(t, 6, 4), g.conv(t, 6, 2)
        return g.op("Relu", g.op("Concat", a, b, axis=1))

    source = tmp_path / "model.onnx"
    onnx.save(conv_chain(middle, c=6, seed=5), source)
    outputs = []
    for run, hash_seed in enumerate(("1", "2")):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxprune",
                str(source),
                "--criterion",
                "fpgm",
                "--ratio",
                "0.5",
                "-o",
                str(folder / "out.onnx"),
                "--report",
                str(folder / "r.json"),
            ],
            env=env,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr.decode()
        outputs.append((sha(folder / "out.onnx"), sha(folder / "out.plan.json"), sha(folder / "r.json")))
    assert outputs[0] == outputs[1]


# --------------------------------------------------------------------------- interruption


def wide_model(path: Path) -> None:
    """~40 MB of weights: writing the pruned model takes long enough to be interrupted."""
    g = GraphBuilder(shape=("N", 64, 4, 4), seed=1)
    t = g.op("Relu", g.conv("x", 64, 1024))
    t = g.op("Relu", g.conv(t, 1024, 1024))
    onnx.save(g.model(g.op("GlobalAveragePool", g.conv(t, 1024, 8))), path)


def prune_command(source: Path, output: Path, ratio: str) -> list[str]:
    return [sys.executable, "-m", "onnxprune", str(source), "--ratio", ratio, "--no-verify", "-o", str(output)]


def kill_during_write(command: list[str], folder: Path, name: str, sig: int, delay: float) -> bool:
    """Start `command`, send `sig` `delay` seconds after its temporary output file appears (or when
    it exits); True when the signal landed while a temporary file existed."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = False
    while process.poll() is None:
        if list(folder.glob(f".{name}.*.tmp")):
            seen = True
            time.sleep(delay)
            break
        time.sleep(0.0005)
    landed = seen and bool(list(folder.glob(f".{name}.*.tmp"))) and process.poll() is None
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=60)
    return landed


def test_kill_during_write_leaves_the_previous_or_the_complete_output(tmp_path):
    source, folder = tmp_path / "wide.onnx", tmp_path / "out"
    folder.mkdir()
    wide_model(source)
    output, plan = folder / "wide.small.onnx", folder / "wide.small.plan.json"
    assert subprocess.run(prune_command(source, output, "0.5"), capture_output=True).returncode == 0
    previous = (sha(output), sha(plan))
    reference = tmp_path / "ref"
    reference.mkdir()
    assert subprocess.run(prune_command(source, reference / output.name, "0.25"), capture_output=True).returncode == 0
    complete = (sha(reference / output.name), sha(reference / plan.name))
    landed = 0
    for sig, delay in [
        (signal.SIGINT, 0),
        (signal.SIGINT, 0.005),
        (signal.SIGTERM, 0.002),
        (signal.SIGKILL, 0),
        (signal.SIGKILL, 0.005),
    ]:
        landed += kill_during_write(prune_command(source, output, "0.25"), folder, output.name, sig, delay)
        assert sha(output) in (previous[0], complete[0]), f"partial output after {sig!r}"
        assert sha(plan) in (previous[1], complete[1])
        leftovers = list(folder.glob(".*.tmp"))
        assert not leftovers or sig == signal.SIGKILL, f"{sig!r} left {leftovers}"
        if sha(output) != previous[0]:  # the write completed before the signal: start again from the old output
            assert subprocess.run(prune_command(source, output, "0.5"), capture_output=True).returncode == 0
    assert landed >= 2, "no signal landed while the output was being written"
    assert subprocess.run(prune_command(source, output, "0.25"), capture_output=True).returncode == 0
    assert sha(output) == complete[0] and not list(folder.glob(".*.tmp"))  # the next run cleans up


def test_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    from onnxprune.model.io import save_model

    dead, alive = tmp_path / ".out.onnx.999999999.x1.tmp", tmp_path / f".out.onnx.{os.getpid()}.x2.tmp"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"being written")
    save_model(conv_chain(lambda g, t: g.op("Relu", t)), tmp_path / "out.onnx")
    assert not dead.exists() and alive.exists() and onnx.load(tmp_path / "out.onnx").graph.node


def test_external_data_is_named_by_content_and_replaced_whole(tmp_path, monkeypatch):
    import onnxprune.model.io as graph
    from onnxprune.model.inputs import random_inputs
    from onnxprune.model.runtime import run_model

    monkeypatch.setattr(graph, "EXTERNAL_DATA_THRESHOLD", 0)
    first, second = (conv_chain(lambda g, t: g.op("Relu", t), c=16, seed=s) for s in (1, 2))  # weights > 1 KiB
    path = tmp_path / "m.onnx"
    graph.save_model(first, path)
    (old,) = tmp_path.glob("m.onnx.*.data")
    graph.save_model(second, path)
    (new,) = tmp_path.glob("m.onnx.*.data")
    assert old.name != new.name and len(new.name) == len("m.onnx.") + 12 + len(".data")
    feeds = random_inputs(second)
    loaded = graph.load_model(path).model
    for name, value in run_model(second, feeds).items():
        np.testing.assert_array_equal(run_model(loaded, feeds)[name], value)


# ------------------------------------------------------------------------------- security


def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys):
    model = conv_chain(lambda g, t: g.op("Relu", t), c=8)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    for location in ("../secret.bin", str(secret), "link.bin"):
        init = model.graph.initializer[0]
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(init.dims))))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        path = folder / "escape.onnx"
        onnx.save(model, path)
        code, _, err = run_cli(capsys, path, "-o", folder / "out.onnx")
        assert code == 2 and "outside the model's folder" in err and len(err.strip().splitlines()) == 1
        assert not (folder / "out.onnx").exists()


def test_loading_a_model_never_runs_code_from_it(tmp_path, capsys, monkeypatch):
    """Strings in the model (symbolic dims, names, metadata) are data, never evaluated."""
    monkeypatch.chdir(tmp_path)
    payload = "__import__('pathlib').Path('PWNED').touch()"
    model = conv_chain(lambda g, t: g.op("Relu", t), c=8)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = payload
    model.doc_string = payload
    onnx.helper.set_model_props(model, {"exec": payload})
    path = tmp_path / "payload.onnx"
    onnx.save(model, path)
    code, _, _ = run_cli(capsys, path, "-o", tmp_path / "out.onnx")
    assert code in (0, 2)
    run_cli(capsys, "analyze", path)
    assert not (tmp_path / "PWNED").exists()


UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRIBUTES = {
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("os", "system"),
    ("os", "popen"),
}


def code_paths(source: str) -> list[str]:
    """What in `source` can run code hidden in data: a pickle-family import, eval / exec / compile /
    __import__, torch.load without weights_only=True, allow_pickle=True, yaml.load, a shell."""

    def true(call: ast.Call, name: str) -> bool:
        return any(
            k.arg == name and not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in call.keywords
        )

    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {line}: import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.Name) and "pickle" in node.id.lower():
            found.append(f"line {line}: {node.id}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"line {line}: {func.id}()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                pair = (func.value.id, func.attr)
                if pair in UNSAFE_ATTRIBUTES:
                    found.append(f"line {line}: {'.'.join(pair)}()")
                weights_only = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if pair == ("torch", "load") and not weights_only:
                    found.append(f"line {line}: torch.load() without weights_only=True")
            if true(node, "allow_pickle"):
                found.append(f"line {line}: allow_pickle=True")
            if true(node, "shell"):
                found.append(f"line {line}: shell=True")
    return found


def test_the_code_path_check_finds_them():
    bad = [
        "import pickle",
        "from dill import loads",
        "eval(text)",
        "exec(code)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "np.load(path, allow_pickle=True)",
        "yaml.load(text)",
        "subprocess.run(cmd, shell=True)",
        "__import__(name)",
        "x = cPickle_loads",
        "compile(text, 'f', 'exec')",
    ]
    assert [line for line in bad if not code_paths(line)] == []
    good = [
        "module.eval()",
        "ast.literal_eval(text)",
        "re.compile(pattern)",
        "np.load(path, mmap_mode='r')",
        "torch.load(path, map_location='cpu', weights_only=True)",
        "yaml.safe_load(text)",
        "subprocess.run(['nvidia-smi'], capture_output=True)",
        "np.load(path, allow_pickle=False)",
    ]
    assert [line for line in good if code_paths(line)] == []


def test_model_and_plan_loading_has_no_code_paths(pruned):
    """Models are protobuf and plans JSON; no module of the package can run code hidden in data:
    no pickle, eval or exec, torch.load only with weights_only=True (every .py file is read)."""
    _, _, plan = pruned
    assert json.loads(plan.read_text())["format"] == "onnxprune-plan/1"
    package = Path(__file__).resolve().parents[1] / "onnxprune"
    files = sorted(package.rglob("*.py"))
    assert len(files) > 50 and package / "recover" / "finetune.py" in files
    found = [f"{path.relative_to(package.parent)} {what}" for path in files for what in code_paths(path.read_text())]
    assert not found, "code paths in the package: " + "; ".join(found)
