"""`onnxprune sensitivity`: each group pruned alone at several ratios, measured on calibration data.

The gated measurement must equal what actually pruning the group (apply_plan) computes; the run
streams the data once; jobs=2 gives the jobs=1 numbers; JSON/PNG outputs and CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from graphs import GraphBuilder, conv_chain

from onnxprune.api import load_and_analyze, score_groups
from onnxprune.measure import pool
from onnxprune.measure.sensitivity import SensitivityStudy, analyze_sensitivity
from onnxprune.model.runtime import run_model
from onnxprune.passes import apply_plan
from onnxprune.select.plan import PruningPlan
from onnxprune.select.selection import SelectOptions, select

RATIOS = (0.0, 0.25, 0.5, 0.75)


def classifier() -> onnx.ModelProto:
    """x -> Conv(4->6) -> Relu -> Conv(6->5) -> Relu -> Flatten -> Gemm(320->3): two prunable groups."""
    g = GraphBuilder(seed=3)
    t = g.op("Relu", g.conv("x", 4, 6))
    t = g.op("Relu", g.conv(t, 6, 5))
    return g.model(g.gemm_head(g.op("Flatten", t), 5 * 8 * 8))


@pytest.fixture()
def model_path(tmp_path) -> Path:
    path = tmp_path / "cls.onnx"
    onnx.save(classifier(), path)
    return path


def write_calib(path: Path, samples: int = 40, labels: bool = True, seed: int = 1) -> Path:
    """Random inputs; labels (when asked) are the classifier's own predictions, a quarter changed."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((samples, 4, 8, 8)).astype(np.float32)}
    if labels:
        logits = run_model(classifier(), {"x": arrays["x"]})
        y = next(iter(logits.values())).argmax(axis=1)
        arrays["y"] = np.where(np.arange(samples) % 4 == 0, (y + 1) % 3, y)
    np.savez(path, **arrays)
    return path


@pytest.fixture()
def calib(tmp_path) -> Path:
    return write_calib(tmp_path / "calib.npz")


def pruned_alone(path: Path, group_id: str, ratio: float) -> tuple[onnx.ModelProto, int]:
    """The model with only `group_id` pruned at `ratio` (l1, local rule), and its kept count."""
    analysis = load_and_analyze(path)
    group = next(g for g in analysis.groups if g.id == group_id)
    kept = select([group], score_groups(analysis, "l1"), SelectOptions(ratio)).kept
    plan = PruningPlan(analysis.groups, kept)
    return apply_plan(analysis.model, plan, analysis.view).model, plan.kept_count(group)


def measured(model: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray, y: np.ndarray):
    """Relative L2 change of the first output over all of x, and top-1 of `model`."""
    out = run_model(model, {"x": x})[model.graph.output[0].name].astype(np.float64)
    ref = run_model(reference, {"x": x})[reference.graph.output[0].name].astype(np.float64)
    return np.linalg.norm(out - ref) / np.linalg.norm(ref), float(np.mean(out.argmax(axis=1) == y))


def test_output_change_equals_actually_pruning_the_group(model_path, calib):
    result = analyze_sensitivity(model_path, calib, ratios=RATIOS, batch_size=16)
    data = np.load(calib)
    x, y = data["x"], data["y"]
    original = onnx.load(model_path)
    assert [g.channels for g in result.groups] == [6, 5] and result.calib_samples == 40
    assert result.baseline_top1 == pytest.approx(measured(original, original, x, y)[1])
    for group in result.groups:
        for point in group.points:
            pruned, kept = pruned_alone(model_path, group.id, point.ratio)
            change, top1 = measured(pruned, original, x, y)
            assert point.kept == kept
            assert point.output_change == pytest.approx(change, rel=1e-4, abs=1e-6)
            assert point.top1 == pytest.approx(top1)
        assert group.points[0].output_change == 0.0 and group.points[0].top1 == result.baseline_top1
        assert group.points[-1].output_change > 0 and group.points[-1].top1 < result.baseline_top1


def test_top1_is_null_without_labels(model_path, tmp_path):
    result = analyze_sensitivity(model_path, write_calib(tmp_path / "x.npz", labels=False), ratios=(0.5,))
    assert result.baseline_top1 is None
    assert all(p.top1 is None for g in result.groups for p in g.points)
    document = result.to_dict()
    assert document["baseline_top1"] is None and document["groups"][0]["ratios"][0]["top1"] is None


def test_data_is_streamed_once(model_path, calib):
    study = SensitivityStudy.prepare(model_path, calib, ratios=RATIOS, batch_size=16)
    calls, batches = [], study.data.batches
    study.data.batches = lambda: calls.append(1) or batches()
    steps = []
    study.run(lambda: steps.append(1))
    assert len(calls) == 1 and len(steps) == study.steps == 3 * 2


def test_jobs_2_equals_jobs_1(model_path, calib):
    one = analyze_sensitivity(model_path, calib, ratios=RATIOS, batch_size=16)
    steps = []
    two = analyze_sensitivity(model_path, calib, ratios=RATIOS, batch_size=16, jobs=2, progress=lambda: steps.append(1))
    assert two.to_dict() == one.to_dict() and len(steps) == 3 * 2


def test_jobs_2_rereads_a_model_too_large_to_send_from_its_file(model_path, calib, monkeypatch):
    one = analyze_sensitivity(model_path, calib, ratios=RATIOS, batch_size=16)
    sent = []
    run_parallel = pool.run_parallel
    monkeypatch.setattr(pool, "MAX_SHARED_MODEL", 0)
    monkeypatch.setattr(pool, "run_parallel", lambda spec, *args: sent.append(spec.model) or run_parallel(spec, *args))
    two = analyze_sensitivity(model_path, calib, ratios=RATIOS, batch_size=16, jobs=2)
    assert sent == [str(model_path)] and two.to_dict() == one.to_dict()
    in_memory = analyze_sensitivity(onnx.load(model_path), calib, ratios=RATIOS, batch_size=16, jobs=2)
    assert len(sent) == 1 and in_memory.groups == one.groups  # no file: measured in this process


def test_data_criterion_and_outputs_without_2d_logits(tmp_path, calib):
    path = tmp_path / "chain.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    result = analyze_sensitivity(path, calib, ratios=(0.5,), criterion="mean_act", batch_size=16)
    assert result.criterion == "mean_act" and result.groups[0].points[0].kept == 4
    assert result.groups[0].points[0].output_change > 0
    assert result.baseline_top1 is not None  # the [N, 3, 1, 1] output is read as 3 classes


def test_cli_writes_json_and_png_and_prints_a_table(model_path, calib, capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "sensitivity", model_path, "--calib", calib, "--ratios", "0.2,0.5", "--batch-size", "16"
    )
    assert code == 0 and "Output change" in out and "g" in out
    document = json.loads((tmp_path / "cls.sensitivity.json").read_text())
    assert document["format"] == "onnxprune-sensitivity/1"
    assert {"criterion", "calib_samples", "baseline_top1", "ratios", "groups", "output"} <= set(document)
    assert document["criterion"] == "l1" and document["calib_samples"] == 40 and document["ratios"] == [0.2, 0.5]
    for row in document["groups"]:
        assert {"id", "name", "channels", "macs_share", "ratios"} <= set(row)
        assert [p["ratio"] for p in row["ratios"]] == [0.2, 0.5]
        for point in row["ratios"]:
            assert set(point) == {"ratio", "kept", "output_change", "top1"}
            assert 0 < point["kept"] <= row["channels"] and 0 <= point["top1"] <= 1
    png = (tmp_path / "cls.sensitivity.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_cli_explicit_output_paths_single_panel_plot(model_path, tmp_path, capsys):
    calib = write_calib(tmp_path / "nolabels.npz", labels=False)
    args = [
        "sensitivity",
        model_path,
        "--calib",
        calib,
        "--json",
        tmp_path / "out/s.json",
        "--plot",
        tmp_path / "out/s.png",
        "--criterion",
        "l2",
    ]
    assert run_cli(capsys, *args)[0] == 0
    assert json.loads((tmp_path / "out/s.json").read_text())["baseline_top1"] is None
    assert (tmp_path / "out/s.png").stat().st_size > 10_000


BAD = {
    "missing --calib": ([], "add --calib"),
    "missing calib file": (["--calib", "nope.npz"], "no such file"),
    "ratio 1": (["--calib", "CALIB", "--ratios", "0.5,1"], "--ratios must be in [0, 1)"),
    "ratios not numbers": (["--calib", "CALIB", "--ratios", "half"], "--ratios"),
    "jobs 0": (["--calib", "CALIB", "--jobs", "0"], "--jobs must be at least 1"),
    "unknown criterion": (["--calib", "CALIB", "--criterion", "magic"], "magic"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_bad_input_is_one_line_exit_2(case, model_path, calib, capsys, tmp_path):
    extra, expected = BAD[case]
    listing = sorted(p.name for p in tmp_path.iterdir())
    args = [str(calib) if a == "CALIB" else (str(tmp_path / a) if a.endswith(".npz") else a) for a in extra]
    code, _, err = run_cli(capsys, "sensitivity", model_path, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0] and lines[0].startswith("onnxprune: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
