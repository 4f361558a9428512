"""Least-squares reconstruction (`--reconstruct`): im2col, the normal equations, the end-to-end
error on held-out data, the plan record and the CLI's refusal without calibration data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder
from recovery_data import correlated_inputs as inputs, output_error as held_out_error

import onnxprune
from onnxprune import prune
from onnxprune.cli import main
from onnxprune.model.runtime import run_model
from onnxprune.recover import NormalEquations, im2col
from onnxprune.recover.reconstruct import conv_geometry
from onnxprune.report.console import allocation_tip


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,8,8] -> Conv 4->16 -> Relu -> Conv 16->16 (stride 2) -> Relu -> Conv 16->8 -> GAP -> Flatten -> Gemm."""
    g = GraphBuilder(seed=seed)
    t = g.op("Relu", g.conv("x", 4, 16))
    t = g.op("Relu", g.conv(t, 16, 16, strides=[2, 2]))
    t = g.op("Relu", g.conv(t, 16, 8))
    t = g.op("Flatten", g.op("GlobalAveragePool", t))
    return g.model(g.gemm_head(t, 8, 5))


@pytest.fixture()
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=inputs(320, seed=1))
    return path


def test_reconstruction_lowers_the_error_on_held_out_data(calib):
    model = conv_net()
    plain = prune(model, "l1", 0.5, calib=calib, batch_size=32)
    rebuilt = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True)
    x = inputs(200, seed=99)  # not the calibration set
    before, after = held_out_error(model, plain.model, x), held_out_error(model, rebuilt.model, x)
    assert after < 0.9 * before
    entry = rebuilt.report["reconstruction"]
    assert entry["applied"] and entry["output_error_after"] < entry["output_error_before"]
    assert entry["held_out_samples"] == 64 and entry["fit_samples"] == 256
    assert rebuilt.report["verification"]["ok"]  # verified before reconstruction
    onnx.checker.check_model(rebuilt.model, full_check=True)


def test_plan_records_the_recovery(calib, tmp_path):
    result = prune(conv_net(), "l1", 0.5, calib=calib, batch_size=32, reconstruct=True, ridge=1e-3)
    result.save(tmp_path / "out.onnx")
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    recovered = plan["recovered"]
    assert recovered["method"] == "least-squares" and recovered["ridge"] == 1e-3
    layers = [entry["node"] for entry in recovered["layers"]]
    conv_nodes = [n for n in result.model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert layers == [n.name for n in conv_nodes[1:]]  # every consumer of a pruned group, network order
    for entry in recovered["layers"]:
        assert plan["weights"][entry["weight"]]["exact"] is False
    untouched = [name for name, e in plan["weights"].items() if "exact" not in e]
    assert untouched  # the first conv's filters are still exact slices
    assert plan["weights"][untouched[0]]["kept"]


def test_normal_equations_match_lstsq_for_a_gemm_layer(tmp_path):
    g = GraphBuilder(shape=("N", 6))
    hidden = g.op("Relu", g.op("Gemm", "x", g.weight(10, 6), g.weight(10), transB=1))
    model = g.model(g.op("Gemm", hidden, g.weight(4, 10), g.weight(4), transB=1))
    rng = np.random.default_rng(3)
    path = tmp_path / "c.npz"
    np.savez(path, x=rng.standard_normal((100, 6)).astype(np.float32))
    result = prune(model, "l1", 0.5, calib=path, batch_size=10, reconstruct=True, ridge=0.0)
    head = result.model.graph.node[-1]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer}
    # the same problem, directly: kept hidden features of the pruned model -> unpruned head output
    x = np.load(path)["x"][:80]  # the fit batches (the last 20 samples are held out)
    pruned_reads = _outputs(result.model, x, head.input[0])
    target = _outputs(model, x, model.graph.output[0].name)
    design = np.hstack([pruned_reads, np.ones((len(x), 1))]).astype(np.float64)
    solution = np.linalg.lstsq(design, target.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(weights[head.input[1]], solution[:-1].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights[head.input[2]], solution[-1], rtol=1e-4, atol=1e-5)


def _outputs(model, x, name):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return run_model(copy, {"x": x})[name]


def test_normal_equations_with_ridge_zero_equal_lstsq():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 5)), rng.standard_normal((50, 3))
    eq = NormalEquations()
    eq.add(x[:20], y[:20])
    eq.add(x[20:], y[20:])
    w, b = eq.solve(0.0)
    expected = np.linalg.lstsq(np.hstack([x, np.ones((50, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(w, expected[:-1], atol=1e-10)
    np.testing.assert_allclose(b, expected[-1], atol=1e-10)


def grouped_net(seed: int = 0) -> onnx.ModelProto:
    """Conv 4->16 -> Relu -> depthwise 3x3 (16 groups) -> Relu -> grouped 3x3 (4 groups) -> Relu -> Conv -> GAP."""
    g = GraphBuilder(seed=seed)
    t = g.op("Relu", g.conv("x", 4, 16))
    t = g.op("Relu", g.conv(t, 16, 16, group=16))
    t = g.op("Relu", g.conv(t, 16, 16, group=4))
    t = g.op("Flatten", g.op("GlobalAveragePool", g.conv(t, 16, 8)))
    return g.model(g.gemm_head(t, 8, 5))


def test_grouped_and_depthwise_convs_are_refitted(calib):
    model = grouped_net()
    plain = prune(model, "l1", 0.5, calib=calib, batch_size=32)
    rebuilt = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True)
    entry = rebuilt.report["reconstruction"]
    assert entry["applied"] and not entry["skipped"]
    groups = {
        n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
        for n in rebuilt.model.graph.node
        if n.op_type == "Conv"
    }
    refitted = {r["node"] for r in rebuilt.plan["recovered"]["layers"]}
    assert sorted(groups[name] for name in refitted if name in groups) == [1, 2, 8]  # 1x grouped, 1x depthwise
    x = inputs(200, seed=99)
    assert held_out_error(model, rebuilt.model, x) < 0.9 * held_out_error(model, plain.model, x)


def test_grouped_normal_equations_solve_each_group():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 3, 4)), rng.standard_normal((60, 3, 2))
    eq = NormalEquations()
    eq.add(x[:25], y[:25])
    eq.add(x[25:], y[25:])
    w, b = eq.solve(0.0)
    assert w.shape == (3, 4, 2) and b.shape == (3, 2)
    for g in range(3):
        expected = np.linalg.lstsq(np.hstack([x[:, g], np.ones((60, 1))]), y[:, g], rcond=None)[0]
        np.testing.assert_allclose(w[g], expected[:-1], atol=1e-10)
        np.testing.assert_allclose(b[g], expected[-1], atol=1e-10)


@pytest.mark.parametrize(
    "k, attrs",
    [
        (3, {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]}),
        (1, {"pads": [0, 0, 0, 0]}),
        (3, {"pads": [2, 1, 0, 2], "dilations": [2, 1], "strides": [1, 2]}),
    ],
)
def test_im2col_equals_onnx_runtime_conv(k, attrs):
    g = GraphBuilder(shape=(2, 5, 9, 7))
    out = g.conv("x", 5, 6, k=k, **attrs)
    model = g.model(out)
    node = model.graph.node[0]
    weight, bias = (onnx.numpy_helper.to_array(i) for i in model.graph.initializer)
    x = np.random.default_rng(1).standard_normal((2, 5, 9, 7)).astype(np.float32)
    expected = run_model(model, {"x": x})[out]
    strides, pads, dilations = conv_geometry(node)
    patches = im2col(x, (k, k), strides, pads, dilations)
    got = (patches @ weight.reshape(6, -1).T + bias).reshape(2, expected.shape[2], expected.shape[3], 6)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)


def test_cli_reconstruct_without_calib_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), path)
    code = main([str(path), "--reconstruct", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--calib" in err
    assert not (tmp_path / "out.onnx").exists()


def test_cli_reconstruct_writes_the_recovery(tmp_path, capsys, calib):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), path)
    code = main(
        [
            str(path),
            "--reconstruct",
            "--calib",
            str(calib),
            "--batch-size",
            "64",
            "--report",
            str(tmp_path / "r.json"),
            "-o",
            str(tmp_path / "out.onnx"),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reconstruction"]["output_error_after"] <= report["reconstruction"]["output_error_before"]
    assert json.loads((tmp_path / "out.plan.json").read_text())["recovered"]["ridge"] == 1e-4


def test_console_suggests_the_sensitivity_allocation_after_a_uniform_target():
    recon = {"layers": 3, "applied": True, "output_error_before": 1.0, "output_error_after": 0.5}
    uniform = {"strategy": "uniform", "target": {"kind": "flops", "target": 5e6, "achieved": 4.9e6}}
    tip = "--allocate sensitivity"
    assert [line for line in allocation_tip({"reconstruction": recon, "allocation": uniform}) if tip in line]
    for report in (
        {"reconstruction": recon, "allocation": dict(uniform, strategy="sensitivity")},
        {"reconstruction": recon, "allocation": {"strategy": "uniform", "target": {"kind": "latency"}}},
        {"allocation": uniform},  # nothing recovered
        {"reconstruction": recon},  # --ratio
    ):
        assert allocation_tip(report) == []


def test_batchnorm_statistics_are_recalibrated(zoo_model, tmp_path):
    """With BN still a node, reconstruction re-estimates each BN's mean/variance in the pruned
    network: the first BN's new statistics equal those of its input measured directly."""
    from onnxprune.measure.calibration import load_calibration
    from onnxprune.model.edit import with_outputs
    from onnxprune.model.runtime import run_model
    from onnxprune.recover.batchnorm import batchnorm_nodes, recalibrate_batchnorm

    path = zoo_model("vgg16_bn", "torchscript_bn")
    x = np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "c.npz", input=x)
    result = onnxprune.prune(path, ratio=0.5, calib=tmp_path / "c.npz", reconstruct=True, batch_size=8)
    assert result.report["reconstruction"]["batchnorm_recalibrated"] > 0
    pruned = onnx.ModelProto()
    pruned.CopyFrom(result.model)
    first = batchnorm_nodes(pruned)[0]
    recalibrate_batchnorm(pruned, load_calibration(tmp_path / "c.npz", pruned, batch_size=8), batches=3)
    seen = run_model(with_outputs(pruned, [first.input[0]]), {"input": x})[first.input[0]].astype(np.float64)
    stats = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    np.testing.assert_allclose(stats[first.input[3]], seen.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[first.input[4]], seen.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_only_outputs_cuts_the_graph_to_what_the_tensors_need():
    """`only_outputs` keeps the nodes (and initializers) an early tensor depends on and nothing
    after it; the cut model computes the same values as the whole one."""
    from onnxprune.model.edit import only_outputs, with_outputs

    model = conv_net()
    first_relu = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    cut = only_outputs(model, [first_relu])
    assert [n.op_type for n in cut.graph.node] == ["Conv", "Relu"]
    assert len(cut.graph.initializer) == 2  # the first Conv's weight and bias
    assert [o.name for o in cut.graph.output] == [first_relu]
    x = inputs(6, seed=3)
    whole = run_model(with_outputs(model, [first_relu]), {"x": x})[first_relu]
    np.testing.assert_array_equal(run_model(cut, {"x": x})[first_relu], whole)
