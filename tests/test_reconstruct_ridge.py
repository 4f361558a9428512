"""Reconstruction's ridge chosen per layer from held-out error, the per-layer acceptance of a refit
and the residual-sum target (recover/ridge.py, recover/reconstruct.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder
from recovery_data import correlated_inputs as inputs, output_error as error

from onnxprune import prune
from onnxprune.recover.ridge import NormalEquations, choose_ridge


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,8,8] -> Conv 4->16 -> Relu -> Conv 16->16 -> Relu -> GAP -> Flatten -> Gemm."""
    g = GraphBuilder(seed=seed)
    t = g.op("Relu", g.conv("x", 4, 16))
    t = g.op("Relu", g.conv(t, 16, 16))
    return g.model(g.gemm_head(g.op("Flatten", g.op("GlobalAveragePool", t)), 16, 5))


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """A stem conv, one basic block (conv, relu, conv, + stem, relu), GAP and a Gemm head."""
    g = GraphBuilder(seed=seed)
    stem = g.op("Relu", g.conv("x", 4, 8))
    inner = g.op("Relu", g.conv(stem, 8, 8))
    out = g.op("Relu", g.op("Add", g.conv(inner, 8, 8), stem))
    return g.model(g.gemm_head(g.op("Flatten", g.op("GlobalAveragePool", out)), 8, 5))


@pytest.fixture()
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=inputs(160, seed=1))
    return path


def test_ridge_chosen_by_held_out_error_beats_a_fixed_bad_ridge(calib):
    model = conv_net()
    auto = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True)
    bad = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True, ridge=30.0)
    chosen, fixed = auto.report["reconstruction"], bad.report["reconstruction"]
    assert chosen["ridge_selection"] == "held-out" and fixed["ridge_selection"] == "fixed"
    assert [c["ridge"] for c in fixed["per_layer"]] == [30.0] * len(fixed["per_layer"])
    assert all(c["ridge"] < 30.0 for c in chosen["per_layer"])
    # the first refitted layer reads the same inputs in both runs: its held-out error is comparable
    assert chosen["per_layer"][0]["held_out_error_after"] < 0.5 * fixed["per_layer"][0]["held_out_error_after"]
    x = inputs(200, seed=99)  # not the calibration set
    assert error(model, auto.model, x) < 0.8 * error(model, bad.model, x)
    assert chosen["applied"] and chosen["output_error_after"] < chosen["output_error_before"]


def test_a_refit_that_raises_the_held_out_error_is_not_accepted(calib):
    model = conv_net()
    plain = prune(model, "l1", 0.5, calib=calib, batch_size=32)
    shrunk = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True, ridge=1e4)
    entry = shrunk.report["reconstruction"]
    for c in entry["per_layer"]:
        assert c["accepted"] == (c["held_out_error_after"] < c["held_out_error_before"])
    rejected = [c["node"] for c in entry["per_layer"] if not c["accepted"]]
    assert rejected and entry["layers_kept_as_pruned"] == len(rejected)  # λ=1e4 shrinks the conv's weights to 0
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in plain.model.graph.initializer}
    got = {i.name: onnx.numpy_helper.to_array(i) for i in shrunk.model.graph.initializer}
    for node in shrunk.model.graph.node:
        if node.name in rejected:  # the layer kept its pruned weights
            for name in node.input[1:]:
                np.testing.assert_array_equal(got[name], weights[name])
    assert rejected[0] not in {r["node"] for r in (shrunk.plan.get("recovered") or {}).get("layers", [])}


def test_choose_ridge_rejects_a_refit_worse_than_the_current_weights():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((12, 3)), rng.standard_normal(3)
    x_fit, x_held = rng.standard_normal((20, 12)), rng.standard_normal((200, 12))
    fit, held = NormalEquations(), NormalEquations()
    fit.add(x_fit, x_fit @ w + b + 3.0 * rng.standard_normal((20, 3)))  # few, noisy rows
    held.add(x_held, x_held @ w + b)
    choice = choose_ridge(fit, held, (w, b))
    assert choice.before < 1e-6 and choice.after > choice.before
    assert not choice.accepted and choice.solution is None
    better = choose_ridge(fit, held, (np.zeros_like(w), np.zeros_like(b)))  # weights far from the truth
    assert better.accepted and better.solution is not None and better.after < better.before
    assert better.ridge > 0 and better.after < better.errors[0.0]  # some ridge beats plain least squares


def test_normal_equations_error_equals_the_residual_norm():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 2))
    eq = NormalEquations()
    eq.add(x, y)
    w, b = rng.standard_normal((5, 2)), rng.standard_normal(2)
    expected = np.linalg.norm(y - x @ w - b) / np.linalg.norm(y)
    assert eq.error(w, b) == pytest.approx(expected, rel=1e-9)


def test_a_layer_feeding_a_residual_add_is_fitted_to_the_sum(calib):
    model = residual_net()
    plain = prune(model, "l1", 0.5, calib=calib, batch_size=32)
    rebuilt = prune(model, "l1", 0.5, calib=calib, batch_size=32, reconstruct=True)
    entry = rebuilt.report["reconstruction"]
    assert "residual sum" in {c["target"] for c in entry["per_layer"]}
    x = inputs(200, seed=99)
    assert error(model, rebuilt.model, x) < 0.9 * error(model, plain.model, x)
