"""Verification of real-world models: shapes that run (hints, probes, --shape), MACs at that shape,
a tolerance calibrated from the model's own float noise, and bisection over failing groups."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder
from onnx import numpy_helper

import onnxprune
import onnxprune.api
from onnxprune.cli import main
from onnxprune.passes import apply_plan


def unpadded_net(metadata: dict | None = None) -> onnx.ModelProto:
    """x [N, 3, H, W] -> Conv 5x5 (no padding) -> Relu -> Conv 3x3 -> GAP: it cannot run at H = W = 1."""
    g = GraphBuilder(shape=("N", 3, "height", "width"))
    t = g.op("Relu", g.conv("x", 3, 8, k=5, pads=[0, 0, 0, 0]))
    model = g.model(g.op("GlobalAveragePool", g.conv(t, 8, 4, k=3, pads=[0, 0, 0, 0])))
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def conv_macs(h: int, w: int, c_in: int = 3, c_mid: int = 8, c_out: int = 4) -> int:
    """MACs of unpadded_net at batch 1 with c_mid channels between the convs."""
    h1, w1 = h - 4, w - 4
    return c_mid * c_in * 25 * h1 * w1 + c_out * c_mid * 9 * (h1 - 2) * (w1 - 2)


def test_probe_picks_a_size_that_runs_and_macs_are_counted_there():
    result = onnxprune.prune(unpadded_net(), ratio=0.5)
    shapes = result.report["verification"]["shapes"]["x"]
    assert shapes["shape"] == [2, 3, 64, 64] and shapes["macs_shape"] == [1, 3, 64, 64]
    assert shapes["source"].startswith("probe")
    assert result.report["verification"]["ok"]
    assert result.report["before"]["macs"] == conv_macs(64, 64)
    assert result.report["after"]["macs"] == conv_macs(64, 64, c_mid=4)
    row = next(r for r in result.report["groups"] if r["frozen"] is None)
    assert row["macs"] == conv_macs(64, 64) and row["macs_after"] == conv_macs(64, 64, c_mid=4)


def test_metadata_hint_and_user_shape():
    hinted = onnxprune.prune(unpadded_net({"imgsz": "[96, 128]"}), ratio=0.5)
    entry = hinted.report["verification"]["shapes"]["x"]
    assert entry["shape"] == [2, 3, 96, 128] and entry["source"] == "hint: metadata imgsz [96, 128]"
    assert hinted.report["before"]["macs"] == conv_macs(96, 128)
    given = onnxprune.prune(unpadded_net({"imgsz": "[96, 128]"}), ratio=0.5, input_shapes={"x": (1, 3, 40, 48)})
    entry = given.report["verification"]["shapes"]["x"]
    assert entry["shape"] == [2, 3, 40, 48] and entry["source"] == "--shape"
    assert given.report["before"]["macs"] == conv_macs(40, 48)


def test_sequence_dims_share_their_symbol():
    from onnxprune.verify.shapes import choose_shapes

    g = GraphBuilder(shape=("batch", "seq", 8))
    g.inputs.append(onnx.helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, ["batch", "seq", 1]))
    model = g.model(g.op("Mul", "x", "m"))
    shapes = choose_shapes(model)
    assert shapes.verify_shapes() == {"x": (2, 16, 8), "m": (2, 16, 1)}


def test_a_batch_symbol_is_the_batch_in_every_input():
    """A recurrent state [layers, batch, hidden] follows its input's batch (it is not a sequence
    to probe): the Concat below runs only when both batches agree."""
    from onnxprune.verify.shapes import choose_shapes

    g = GraphBuilder(shape=("batch", 8))
    g.inputs.append(onnx.helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, "batch", 8]))
    model = g.model(g.op("Concat", g.op("Unsqueeze", "x", g.const(np.array([0]), "zero")), "state", axis=0))
    shapes = choose_shapes(model)
    assert shapes.verify_shapes() == {"x": (2, 8), "state": (2, 2, 8)}
    assert shapes.shapes == {"x": (1, 8), "state": (2, 1, 8)}


def cancelling_net() -> onnx.ModelProto:
    """A deep chain whose output nearly cancels: out = P(h) - Q(h) with Q = P (1 - 1e-4) on
    average, so float32 rounding is ~1e-3 of the output."""
    g = GraphBuilder(shape=("N", 16, 8, 8), seed=3)
    t = "x"
    for _ in range(6):
        t = g.op("Relu", g.conv(t, 16, 16, k=3, bias=False))
    p = g.rng.standard_normal((4, 16, 1, 1)).astype(np.float32)
    q = (p * (1 - 1e-4 * g.rng.uniform(0.5, 1.5, p.shape))).astype(np.float32)
    diff = g.op("Sub", g.op("Conv", t, g.const(p, "p")), g.op("Conv", t, g.const(q, "q")))
    return g.model(g.op("GlobalAveragePool", diff))


def _reordered(model, plan, view=None, perturb: float = 0.0):
    """apply_plan, then an exact rewrite that changes the summation order: the last chain conv's
    output channels and P's and Q's input channels reversed together; `perturb` then moves one
    kept weight of P by that much (relative): a wrong rewrite."""
    applied = apply_plan(model, plan, view)
    inits = {init.name: init for init in applied.model.graph.initializer}
    last = [n for n in applied.model.graph.node if n.op_type == "Conv"][-3]
    for name, axis in [(last.input[1], 0)] + [(n, 1) for n in inits if n[0] in "pq"]:
        value = np.flip(numpy_helper.to_array(inits[name]), axis).copy()
        if name.startswith("p"):
            value[0, 0] *= 1 + perturb
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return applied


def test_float_noise_above_1e4_passes_and_a_wrong_weight_fails(monkeypatch):
    monkeypatch.setattr(onnxprune.api, "apply_plan", _reordered)
    result = onnxprune.prune(cancelling_net(), ratio=0.5, exclude=["p*", "q*"])
    check = result.report["verification"]
    assert check["ok"] and check["noise"] > 1e-4 and check["max_relative"] > 1e-4  # 1e-4 would have failed
    assert check["tolerance"] == pytest.approx(min(1e-2, max(1e-4, 10 * check["noise"])))
    assert check["noise_method"].startswith("float64")
    monkeypatch.setattr(onnxprune.api, "apply_plan", lambda m, p, v=None: _reordered(m, p, v, 1e-3))
    with pytest.raises(onnxprune.VerificationError, match="differs from the masked reference"):
        onnxprune.prune(cancelling_net(), ratio=0.5, exclude=["p*", "q*"], strict=True)


def test_genuine_mismatch_on_a_quiet_model_fails():
    from onnxprune.verify.noise import Noise
    from onnxprune.verify.reference import compare

    reference = {"y": np.ones(4, np.float32)}
    pruned = {"y": np.array([1, 1, 1, 1.003], np.float32)}
    result = compare(pruned, reference, Noise("test", {"y": 1e-6}))
    assert not result.ok and result.outputs[0].tolerance == pytest.approx(1e-4)


def test_fp16_model_verifies_with_fp16_tolerance():
    g = GraphBuilder(shape=("N", 8, 8, 8), seed=1)
    t = "x"
    for _ in range(4):
        t = g.op("Relu", g.conv(t, 8, 8))
    model = g.model(g.op("GlobalAveragePool", t))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for info in list(model.graph.input) + list(model.graph.output):
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del model.graph.value_info[:]
    result = onnxprune.prune(model, ratio=0.5)
    check = result.report["verification"]
    assert check["ok"] and 4 * 2**-10 <= check["tolerance"] <= 32 * 2**-10
    assert result.model.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def two_group_net() -> onnx.ModelProto:
    """x -> Conv a (4->8) -> Relu -> Conv b (8->8) -> Relu -> Conv c (8->3) -> GAP: two groups."""
    g = GraphBuilder(seed=2)
    t = g.op("Relu", g.conv("x", 4, 8))
    t = g.op("Relu", g.conv(t, 8, 8))
    return g.model(g.op("GlobalAveragePool", g.conv(t, 8, 3)))


def _break_second_group(model, plan, view=None):
    """apply_plan, then corrupt the third conv's weight whenever it was sliced (the second group)."""
    applied = apply_plan(model, plan, view)
    conv = [n for n in applied.model.graph.node if n.op_type == "Conv"][2]
    for init in applied.model.graph.initializer:
        if init.name == conv.input[1] and init.dims[1] < 8:
            value = numpy_helper.to_array(init).copy()
            value[0] += 0.5
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return applied


def test_bisection_freezes_the_failing_group_and_prunes_the_rest(monkeypatch, tmp_path):
    monkeypatch.setattr(onnxprune.api, "apply_plan", _break_second_group)
    result = onnxprune.prune(two_group_net(), ratio=0.5)
    check = result.report["verification"]
    (failed,) = check["failed_groups"]
    rows = {r["id"]: r for r in result.report["groups"]}
    assert rows[failed["id"]]["frozen"].startswith("pruning it failed verification (max relative difference")
    assert failed["max_relative"] > failed["tolerance"]
    pruned = [r for r in rows.values() if r["frozen"] is None]
    assert len(pruned) == 1 and pruned[0]["kept"] == 4 and rows[failed["id"]]["kept"] == 8
    assert check["ok"] and check["max_relative"] <= check["tolerance"]
    path = tmp_path / "two.onnx"
    onnx.save(two_group_net(), path)
    assert main([str(path), "--strict", "-o", str(tmp_path / "out.onnx")]) == 3
    assert not (tmp_path / "out.onnx").exists()
    assert main([str(path), "-o", str(tmp_path / "out.onnx")]) == 0
    assert main(["check", str(tmp_path / "out.onnx"), "--against", str(path)]) == 0


def _unrunnable_second_group(model, plan, view=None):
    """apply_plan, then drop an input channel of the third conv's weight whenever it was sliced: a
    rewrite ONNX Runtime refuses to run (the input model runs)."""
    applied = apply_plan(model, plan, view)
    conv = [n for n in applied.model.graph.node if n.op_type == "Conv"][2]
    for init in applied.model.graph.initializer:
        if init.name == conv.input[1] and init.dims[1] < 8:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:, 1:].copy(), init.name))
    return applied


def test_a_rewrite_onnx_runtime_cannot_run_is_our_fault_and_its_group_is_frozen(monkeypatch):
    monkeypatch.setattr(onnxprune.api, "apply_plan", _unrunnable_second_group)
    with pytest.raises(onnxprune.VerificationError, match="cannot run the pruned model .*onnxprune's fault"):
        onnxprune.prune(two_group_net(), ratio=0.5, strict=True)
    result = onnxprune.prune(two_group_net(), ratio=0.5)
    frozen = [r["frozen"] for r in result.report["groups"] if r["frozen"]]
    assert any(f.startswith("pruning it made a model ONNX Runtime cannot run") for f in frozen)
    assert result.report["verification"]["ok"]
    assert sorted((r["channels"], r["kept"]) for r in result.report["groups"] if r["channels"] == 8) == [(8, 4), (8, 8)]
