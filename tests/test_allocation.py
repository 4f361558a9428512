"""Budgets and allocation: --target-flops/--target-params/--target-latency met within 2 % and never
above by every strategy (uniform, global, sensitivity, random-search), layerwise maps applied
exactly, seeded searches reproducible (also across --jobs), the JSON report and the plots, and every
bad input as one line with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain
from onnx import numpy_helper

import onnxprune
from onnxprune import InputError
from onnxprune.bench.inputs import count_macs_params
from onnxprune.cli import main
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model
from onnxprune.report.document import model_summary
from onnxprune.select import budgets

TOLERANCE = 0.02
STRATEGIES = ("uniform", "global", "sensitivity", "random-search")
#: (model, target kind, fraction of the unpruned model's value)
TARGETS = [
    ("resnet20_a", "flops", 0.5),
    ("resnet20_a", "params", 0.4),
    ("mobilenet_v2", "flops", 0.4),
    ("mobilenet_v2", "params", 0.6),
    ("vgg16_bn", "flops", 0.3),
    ("vgg16_bn", "params", 0.5),
]


def write_calib(path: Path, shape=(3, 32, 32), samples: int = 12, classes: int = 10, seed: int = 0) -> Path:
    """Random inputs and random labels (top-1 is then reported too)."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((samples, *shape)).astype(np.float32), y=rng.integers(0, classes, samples))
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    return write_calib(tmp_path_factory.mktemp("calib") / "calib.npz")


def run(path, calib: Path | None = None, **options) -> onnxprune.PruneResult:
    """prune() with a small calibration set (when given) and few random-search candidates."""
    options.setdefault("samples", 4)
    if calib is not None:
        options.update(calib=calib, calib_samples=12, batch_size=12)
    return onnxprune.prune(path, **options)


def achieved(result: onnxprune.PruneResult, kind: str) -> float:
    """MACs or parameters of the pruned model itself (not the strategy's estimate)."""
    return model_summary(result.model)["macs" if kind == "flops" else "params"]


def kept_counts(result: onnxprune.PruneResult) -> dict[str, int]:
    return {g["id"]: len(g["kept"]) for g in result.plan["groups"]}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model,kind,fraction", TARGETS, ids=[f"{m}-{k}-{f}" for m, k, f in TARGETS])
def test_target_met_within_tolerance_never_above(model, kind, fraction, strategy, zoo_model, calib, record_property):
    result = run(zoo_model(model), calib, allocate=strategy, **{f"target_{kind}": fraction})
    report = result.report
    target = report["allocation"]["target"]
    before = report["before"]["macs" if kind == "flops" else "params"]
    assert target["kind"] == kind and target["target"] == pytest.approx(fraction * before)
    value = achieved(result, kind)
    record_property("achieved_over_target", value / target["target"])
    assert (1 - TOLERANCE) * target["target"] <= value <= target["target"]
    assert target["achieved"] == value
    assert report["verification"]["ok"]
    allocation = report["allocation"]
    prunable = {g["id"] for g in report["groups"] if g["frozen"] is None}
    assert allocation["strategy"] == strategy and set(allocation["ratios"]) <= prunable
    assert allocation["layers"] and all(0 < row["fraction"] <= 1 for row in allocation["layers"])
    json.dumps(report)  # JSON-ready


def test_sensitivity_history_holds_the_curves_and_the_steps(zoo_model, calib):
    result = run(zoo_model("vgg16_bn"), calib, allocate="sensitivity", target_flops=0.5)
    history = result.report["allocation"]["history"]
    curves = history[0]["curves"]
    prunable = [g["id"] for g in result.report["groups"] if g["frozen"] is None]
    assert list(curves) == prunable
    for curve in curves.values():
        assert curve["ratios"] == pytest.approx([0.1 * i for i in range(1, 10)])
        assert len(curve["output_change"]) == 9 and all(c >= 0 for c in curve["output_change"])
        assert all(t is not None for t in curve["top1"])  # the calibration set has labels
    steps = [h for h in history if "step" in h]
    assert steps and steps[-1]["flops"] <= result.report["allocation"]["target"]["target"]
    assert all(steps[i]["flops"] > steps[i + 1]["flops"] for i in range(len(steps) - 1))


def insensitive_pair() -> onnx.ModelProto:
    """x -> Conv(4->8) -> Relu -> Conv(8->8, tiny weights, large bias) -> Relu -> Conv(8->3) -> GAP:
    removing channels of the first group barely moves the output, removing the second's does."""
    g = GraphBuilder(shape=("N", 4, 8, 8), seed=1)
    first = g.op("Relu", g.conv("x", 4, 8))
    second = g.op("Relu", g.conv(first, 8, 8))
    model = g.model(g.op("GlobalAveragePool", g.conv(second, 8, 3)))
    weights = {i.name: i for i in model.graph.initializer}
    conv2 = model.graph.node[2]
    for name, scale, shift in ((conv2.input[1], 1e-3, 0.0), (conv2.input[2], 1.0, 3.0)):
        value = numpy_helper.to_array(weights[name]) * scale + shift
        weights[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def relative_change(pruned: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> float:
    out, ref = (next(iter(run_model(m, {"x": x}).values())).astype(np.float64) for m in (pruned, original))
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def test_sensitivity_spends_the_budget_where_the_output_suffers_least(tmp_path):
    path = tmp_path / "pair.onnx"
    model = insensitive_pair()
    onnx.save(model, path)
    data = write_calib(tmp_path / "pair.npz", shape=(4, 8, 8), classes=3)
    result = run(path, data, allocate="sensitivity", target_params=0.45)
    by_name = {g["name"]: g["id"] for g in result.report["groups"] if g["frozen"] is None}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    first, second = by_name[convs[0]], by_name[convs[1]]
    assert result.report["allocation"]["ratios"] == {first: 0.75, second: 0.0}
    curves = result.report["allocation"]["history"][0]["curves"]
    assert curves[first]["output_change"][-1] < 0.1 * curves[second]["output_change"][1]
    uniform = run(path, data, allocate="uniform", target_params=0.45)
    x = np.load(data)["x"]
    assert relative_change(result.model, model, x) < 0.1 * relative_change(uniform.model, model, x)


def test_random_search_history_and_seeds(zoo_model, calib):
    path = zoo_model("mobilenet_v2")
    first = run(path, calib, allocate="random-search", samples=5, seed=7, target_flops=0.5)
    again = run(path, calib, allocate="random-search", samples=5, seed=7, target_flops=0.5)
    other = run(path, calib, allocate="random-search", samples=5, seed=8, target_flops=0.5)
    history = first.report["allocation"]["history"]
    candidates = [h for h in history if "candidate" in h]
    assert len(candidates) == 5 and sum(h["chosen"] for h in candidates) == 1
    chosen = next(h for h in candidates if h["chosen"])
    assert chosen["score"] == min(h["score"] for h in candidates)
    assert chosen["ratios"] == pytest.approx(first.report["allocation"]["ratios"], abs=1e-6)
    assert chosen["flops"] == first.report["after"]["macs"]
    for h in candidates:
        assert set(h) >= {"ratios", "flops", "params", "score", "top1"}
        assert h["flops"] <= 0.5 * first.report["before"]["macs"]
    assert candidates[0]["shape"] == "uniform"
    assert kept_counts(first) == kept_counts(again) and first.plan["groups"] == again.plan["groups"]
    assert history == again.report["allocation"]["history"]
    assert [h["ratios"] for h in candidates[1:]] != [h["ratios"] for h in other.report["allocation"]["history"][1:5]]


@pytest.mark.parametrize("strategy", ["random-search", "sensitivity"])
def test_jobs_give_the_same_plan(strategy, zoo_model, calib):
    path = zoo_model("resnet20_a")
    one = run(path, calib, allocate=strategy, samples=4, jobs=1, target_flops=0.5)
    two = run(path, calib, allocate=strategy, samples=4, jobs=2, target_flops=0.5)
    assert one.plan["groups"] == two.plan["groups"]
    assert json.dumps(one.report["allocation"]["history"]) == json.dumps(two.report["allocation"]["history"])


@pytest.mark.parametrize("study, measured", [(4, 4), (0, 12), (50, 12)])
def test_sensitivity_measures_the_first_allocate_samples(study, measured, zoo_model, calib):
    result = run(zoo_model("resnet20_a"), calib, allocate="sensitivity", target_flops=0.5, allocate_samples=study)
    assert result.report["allocation"]["history"][0]["samples"] == measured
    assert result.report["after"]["macs"] <= 0.5 * result.report["before"]["macs"]


def wide_chain() -> onnx.ModelProto:
    """Three 3x3 convolutions of 64 channels at 32x32: enough work for latency to follow MACs."""
    g = GraphBuilder(shape=("N", 4, 32, 32), seed=2)
    t = g.op("Relu", g.conv("x", 4, 64))
    t = g.op("Relu", g.conv(t, 64, 64))
    t = g.op("Relu", g.conv(t, 64, 64))
    return g.model(g.op("GlobalAveragePool", g.conv(t, 64, 3)))


def macs_clock(models, feeds, warmup=3, iters=20):
    """A noiseless stand-in for `interleaved` (the "sessions" are the models): one run takes
    1 ms per million MACs (batch 1). Wall-clock timing on a shared 2-core machine drifts by
    more than the 40 % asked below; the real measurement is checked in
    benchmarks/latency_target.py."""
    per_model = feeds if isinstance(feeds, list) else [feeds] * len(models)
    samples = []
    for model, given in zip(models, per_model):
        shapes = {i.name: tuple(v.shape[1:]) for i, v in zip(model.graph.input, given.values())}
        samples.append([count_macs_params(model, shapes)[0] / 1e9] * iters)
    return samples


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_latency_target_is_met_as_measured(strategy, tmp_path, monkeypatch):
    monkeypatch.setattr(budgets, "make_session", lambda model, **_: model)
    monkeypatch.setattr(budgets, "interleaved", macs_clock)
    path = tmp_path / "wide.onnx"
    model = wide_chain()
    onnx.save(model, path)
    data = write_calib(tmp_path / "wide.npz", shape=(4, 32, 32), samples=4, classes=3)
    baseline = 1000 * macs_clock([model], random_inputs(model, batch=1))[0][0]
    goal = 0.6 * baseline
    result = onnxprune.prune(path, allocate=strategy, target_latency=f"{goal:.6f}", calib=data, samples=2, batch_size=4)
    target = result.report["allocation"]["target"]
    assert target["kind"] == "latency" and target["target"] == pytest.approx(goal, rel=1e-5)
    assert 0 < target["achieved"] <= target["target"]
    assert target["achieved"] == pytest.approx(result.report["after"]["macs"] / 1e6, rel=1e-6)
    # no refill pass for latency (each step is a measurement), so the bisection may stop below
    assert target["achieved"] >= 0.8 * goal
    assert result.report["verification"]["ok"]


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_layerwise_applies_the_map_exactly(suffix, zoo_model, tmp_path):
    path = zoo_model("vgg16_bn")
    groups = {g.id: g for g in onnxprune.analyze(path)}
    # a layer name selects the group of its output channels (not the group it reads)
    mapping = {"g2": 0.5, groups["g4"].name: 0.25, "g8": 0.3, groups["g0"].name: 0.5}
    expected = {"g2": 0.5, "g4": 0.25, "g8": 0.3, "g0": 0.5}
    file = tmp_path / f"map.{suffix}"
    if suffix == "yaml":
        file.write_text(pytest.importorskip("yaml").safe_dump(mapping))
    else:
        file.write_text(json.dumps(mapping))
    result = onnxprune.prune(path, layerwise=str(file))
    counts = kept_counts(result)
    for gid, group in groups.items():
        assert counts[gid] == group.channels - math.floor(expected.get(gid, 0.0) * group.channels), gid
    assert result.report["allocation"]["strategy"] == "layerwise"
    assert result.report["allocation"]["ratios"] == expected
    assert result.report["verification"]["ok"]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plots_and_report(zoo_model, calib, tmp_path, capsys):
    from PIL import Image

    plots, report_path = tmp_path / "plots", tmp_path / "report.json"
    code, out, err = cli(
        capsys,
        zoo_model("mobilenet_v2"),
        "-o",
        tmp_path / "m.onnx",
        "--target-flops",
        "0.5",
        "--allocate",
        "random-search",
        "--samples",
        "4",
        "--calib",
        calib,
        "--calib-samples",
        "12",
        "--plot",
        plots,
        "--report",
        report_path,
    )
    assert code == 0, err
    assert "random_search.png" in out and "target" in out
    for name in ("kept_per_layer.png", "random_search.png"):
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 300
    report = json.loads(report_path.read_text())
    layers = report["allocation"]["layers"]
    pruned = onnx.load(tmp_path / "m.onnx")
    sizes = {i.name: list(i.dims) for i in pruned.graph.initializer}
    convs = {n.name: n for n in pruned.graph.node if n.op_type == "Conv"}
    assert len(layers) == len(convs) + 1  # every convolution, then the classifier's Gemm
    for row in layers:
        if row["op"] == "Conv":
            assert sizes[convs[row["layer"]].input[1]][0] == row["kept"]
    code, out, _ = cli(
        capsys, zoo_model("vgg16_bn"), "-o", tmp_path / "v.onnx", "--ratio", "0.3", "--plot", tmp_path / "plain"
    )
    assert code == 0 and (tmp_path / "plain" / "kept_per_layer.png").exists()
    assert not (tmp_path / "plain" / "random_search.png").exists()
    code, out, _ = cli(
        capsys,
        zoo_model("vgg16_bn"),
        "-o",
        tmp_path / "l.onnx",
        "--layerwise",
        write_map(tmp_path, {"g3": 0.5}),
        "--report",
        report_path,
    )
    assert code == 0 and "layerwise" in out
    assert json.loads(report_path.read_text())["allocation"]["ratios"] == {"g3": 0.5}


@pytest.fixture()
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    return path


def write_map(tmp_path: Path, mapping: dict) -> Path:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    return path


BAD = {
    "two targets": (["--target-flops", "0.5", "--target-params", "0.5"], "give one target"),
    "target 0": (["--target-flops", "0"], "must be positive"),
    "target above 1": (["--target-params", "1.5"], "a fraction must be in (0, 1]"),
    "target above the model": (["--target-flops", "1G"], "at most the model's"),
    "unreadable target": (["--target-flops", "half"], "cannot read"),
    "unreachable": (["--target-params", "0.001"], "cannot be reached"),
    "unreachable sensitivity": (
        ["--target-params", "0.001", "--allocate", "sensitivity", "--calib", "{calib}"],
        "cannot be reached",
    ),
    "allocate without target": (["--allocate", "global"], "needs a target"),
    "unknown strategy": (["--target-flops", "0.5", "--allocate", "magic"], "invalid choice"),
    "sensitivity without calib": (["--target-flops", "0.5", "--allocate", "sensitivity"], "add --calib"),
    "random-search without calib": (["--target-flops", "0.5", "--allocate", "random-search"], "add --calib"),
    "no samples": (
        ["--target-flops", "0.5", "--allocate", "random-search", "--samples", "0", "--calib", "{calib}"],
        "--samples must be at least 1",
    ),
    "no jobs": (
        ["--target-flops", "0.5", "--allocate", "random-search", "--jobs", "0", "--calib", "{calib}"],
        "--jobs must be at least 1",
    ),
    "negative allocate-samples": (
        ["--target-flops", "0.5", "--allocate", "sensitivity", "--allocate-samples", "-1", "--calib", "{calib}"],
        "--allocate-samples must be a whole number",
    ),
    "unknown layer": (["--layerwise", "{map}"], "names no group or layer"),
    "layerwise ratio 1": (["--layerwise", "{map1}"], "must be in [0, 1)"),
    "missing layerwise file": (["--layerwise", "{missing}"], "--layerwise"),
    "plot into a file": (["--target-flops", "0.5", "--plot", "{map}"], "not a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_allocation_input_is_one_line_exit_2(case, tiny, tmp_path, capsys):
    args, expected = BAD[case]
    names = {
        "calib": write_calib(tmp_path / "c.npz", shape=(4, 8, 8), samples=4, classes=3),
        "map": write_map(tmp_path, {"no_such_layer": 0.5}),
        "missing": tmp_path / "missing.json",
    }
    names["map1"] = tmp_path / "map1.json"
    names["map1"].write_text(json.dumps({"g0": 1.0}))
    listing = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(capsys, tiny, "-o", tmp_path / "out.onnx", *[a.format(**names) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_api_rejects_two_targets_and_a_strategy_without_target(tiny):
    with pytest.raises(InputError, match="give one target"):
        onnxprune.prune(tiny, target_flops=0.5, target_latency=1.0)
    with pytest.raises(InputError, match="needs a target"):
        onnxprune.prune(tiny, allocate="sensitivity")
