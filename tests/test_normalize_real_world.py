"""Normalization of models as real exporters write them (issue 13, classes 1, 2, 3, 4 (negative
dims) and 11): IR 3 model-zoo graphs, If/Loop subgraphs, Paddle's -1 batch, jax2tf shape
arithmetic; the model is checked after every normalization pass, and our own failures are
internal errors, never the input's."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
import real_world_graphs as rw
from onnx import numpy_helper

import onnxprune
import onnxprune.model.normalize as graph_module
from onnxprune.api import load_and_analyze, require_prunable
from onnxprune.errors import InputError, InternalError
from onnxprune.model.io import load_model
from onnxprune.model.normalize import (
    check_normalized,
    model_problem,
    normalization_passes,
    normalize,
)
from onnxprune.model.runtime import make_session
from onnxprune.verify.verification import require_valid_model

REAL_MODELS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "real-models"
SMALL_GRAPHS = [
    rw.ir3_model_zoo,
    rw.if_branch_model,
    rw.loop_model,
    rw.paddle_negative_batch,
    rw.jax2tf_shape_arithmetic,
    rw.jax2tf_glu,
    rw.jax2tf_two_rounds,
]


def run(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    """Outputs of a model on ONNX Runtime CPU."""
    return make_session(model).run(None, feeds)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def frozen(groups) -> dict[str, str]:
    return {g.name: g.frozen for g in groups if g.frozen}


def check_after_every_pass(model: onnx.ModelProto) -> list[str]:
    """Run the normalization passes one by one (graph-surgeon's lifting, folding, dead-node removal
    and sorting separately); after each, the model must pass the full ONNX checker and ONNX
    Runtime must load it. Returns the pass names."""
    assert model_problem(model) is None, "the test model itself is invalid"
    names = []
    for name, run_pass in normalization_passes(separate=True):
        model = run_pass(model)
        problem = model_problem(model)
        assert problem is None, f"after pass '{name}': {problem}"
        names.append(name)
    return names


@pytest.mark.parametrize("build", SMALL_GRAPHS, ids=lambda f: f.__name__)
def test_every_normalization_pass_keeps_small_real_world_graphs_valid(build):
    names = check_after_every_pass(build())
    assert names[:2] == ["initializers only as initializers (IR < 4)", "negative dimensions are dynamic"]
    assert {"lift constants", "fold constants", "remove dead nodes", "sort topologically"} <= set(names)


#: The shared models whose normalization is quick. The PP-OCRv4 detector and YOLOv8n spend 20 to
#: 90 s in ONNX Runtime's symbolic shape inference of their Resize nodes (sympy), so they are left
#: to the tests that prune them (they passed this check when it was written).
QUICK_REAL_MODELS = ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "common_det.onnx")


@pytest.fixture(scope="session")
def quick_real_models() -> list[pathlib.Path]:
    """The quick shared third-party models (skipped when the folder is missing)."""
    paths = [REAL_MODELS / name for name in QUICK_REAL_MODELS if (REAL_MODELS / name).exists()]
    if not paths:
        pytest.skip(f"no real models in {REAL_MODELS}")
    return paths


def test_every_normalization_pass_keeps_the_real_models_valid(quick_real_models):
    for path in quick_real_models:
        names = check_after_every_pass(load_model(path).model)
        assert len(names) == 9


# --- class 1: IR 3 -----------------------------------------------------------------------------


def test_ir3_model_zoo_graph_prunes_end_to_end(tmp_path):
    model = rw.ir3_model_zoo()
    assert model.ir_version == 3 and model_problem(model) is None  # a valid input
    assert {i.name for i in model.graph.initializer} <= {i.name for i in model.graph.input}
    analysis = load_and_analyze(model)
    assert analysis.view.graph_inputs == {"data_0"}  # initializers are never user inputs
    assert [g.name for g in analysis.groups if g.prunable] == ["conv1", "conv2"]
    result = onnxprune.prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert result.report["verification"]["outputs"]["prob_1"]["relative"] < 1e-6
    kept = weights(result.model)
    assert kept["conv1_w_0"].shape == (4, 3, 3, 3) and kept["conv2_w_0"].shape == (4, 4, 3, 3)
    assert kept["conv3_w_0"].shape == (4, 4, 3, 3)
    path = result.save(tmp_path / "zoo.onnx")
    written = onnx.load(str(path))
    onnx.checker.check_model(written, full_check=True)
    assert written.ir_version == 4 and written.opset_import[0].version == 9
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (y,) = run(written, data_0=x)
    assert y.shape == (1, 4, 1, 1) and np.isfinite(y).all()


# --- class 2: control flow ---------------------------------------------------------------------


def subgraph_bytes(model: onnx.ModelProto, op_type: str) -> list[bytes]:
    (node,) = [n for n in model.graph.node if n.op_type == op_type]
    return [a.SerializeToString() for a in node.attribute]


def test_if_branches_survive_and_the_main_convs_are_pruned():
    model = rw.if_branch_model()
    normalized = normalize(model)
    assert subgraph_bytes(normalized, "If") == subgraph_bytes(model, "If")
    result = onnxprune.prune(model, ratio=0.5)
    assert [g.name for g in result.groups if g.prunable] == ["conv_a"]
    assert frozen(result.groups)["conv_b"] == "read inside the subgraph of If 'gate'"
    assert result.report["verification"]["ok"]
    assert subgraph_bytes(result.model, "If") == subgraph_bytes(model, "If")
    kept = weights(result.model)
    assert kept["wa"].shape == (4, 3, 3, 3) and kept["wb"].shape == (8, 4, 3, 3)
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for rate in (2, 7):  # both branches
        (y,) = run(result.model, x=x, sr=np.array(rate, np.int64))
        assert y.shape == (2, 4, 1, 1)


def test_loop_body_survives_and_its_outer_reads_are_frozen():
    model = rw.loop_model()
    normalized = normalize(model)
    assert "wl" in weights(normalized)  # read only inside the body: not dead
    assert subgraph_bytes(normalized, "Loop") == subgraph_bytes(model, "Loop")
    result = onnxprune.prune(model, ratio=0.5)
    assert [g.name for g in result.groups if g.prunable] == ["conv_a", "conv_c"]
    assert frozen(result.groups)["conv_b"] == "read inside the subgraph of Loop 'decoder'"
    assert result.report["verification"]["ok"]
    assert subgraph_bytes(result.model, "Loop") == subgraph_bytes(model, "Loop")
    kept = weights(result.model)
    assert kept["wa"].shape == (4, 3, 3, 3) and kept["wc"].shape == (3, 8, 3, 3)
    np.testing.assert_array_equal(kept["wl"], weights(model)["wl"])
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, z = run(result.model, x=x, trip=np.array(3, np.int64))
    assert y.shape == (2, 8, 1, 1) and z.shape == (2, 4, 1, 1)


def test_a_main_weight_read_by_a_subgraph_is_frozen():
    """A weight that a main Conv and a Loop body both read keeps all its channels."""
    model = rw.loop_model()
    conv_c = next(n for n in model.graph.node if n.name == "conv_c")
    model.graph.initializer.append(numpy_helper.from_array(weights(model)["wl"][:6], "wc_shared"))
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    body.node.insert(0, onnx.helper.make_node("Identity", ["wc_shared"], ["wc_seen"]))
    conv_c.input[1] = "wc_shared"
    groups = onnxprune.analyze(model)
    assert frozen(groups)["conv_c"] == "read inside the subgraph of Loop 'decoder'"


# --- class 3: never blame the input ------------------------------------------------------------


def test_a_normalization_that_breaks_the_model_is_an_internal_error(monkeypatch, tmp_path):
    def drop_first_node(model):
        del model.graph.node[0]
        return model

    passes = normalization_passes()
    monkeypatch.setattr(
        graph_module, "normalization_passes", lambda separate=False: passes + [("bad", drop_first_node)]
    )
    with pytest.raises(InternalError, match=r"^internal error: normalization produced an invalid model \(ONNX"):
        onnxprune.prune(rw.paddle_negative_batch(), ratio=0.5)
    path = tmp_path / "m.onnx"
    onnx.save(rw.paddle_negative_batch(), str(path))
    from onnxprune.cli import main

    assert main([str(path), "--ratio", "0.5", "-o", str(tmp_path / "out.onnx")]) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_check_normalized_blames_only_what_we_did():
    good = rw.paddle_negative_batch()
    broken = onnx.ModelProto()
    broken.CopyFrom(good)
    del broken.graph.node[1]
    with pytest.raises(InternalError, match="please report it"):
        check_normalized(good, broken)
    check_normalized(broken, broken)  # as bad as the input: not ours to report
    assert InternalError.exit_code == 1


def test_an_invalid_pruned_model_is_an_internal_error_and_no_prunable_group_is_not_invalid_input():
    analysis = load_and_analyze(rw.paddle_negative_batch())
    broken = onnx.ModelProto()
    broken.CopyFrom(analysis.model)
    del broken.graph.node[0]
    with pytest.raises(InternalError, match="pruning produced an invalid model"):
        require_valid_model(broken, analysis.model)
    for group in analysis.groups:
        group.frozen = group.frozen or "test"
    with pytest.raises(InputError, match=r"no prunable channel group \(3 frozen"):
        require_prunable(analysis)


# --- class 4 (negative dims) -------------------------------------------------------------------


def test_negative_batch_dimension_is_dynamic():
    model = rw.paddle_negative_batch()
    normalized = normalize(model)
    batch = normalized.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "x_dim0" and not batch.HasField("dim_value")
    result = onnxprune.prune(model, ratio=0.5)
    assert result.report["verification"]["ok"]
    assert [g.name for g in result.groups if g.prunable] == ["conv1"]
    assert weights(result.model)["conv1_w"].shape == (4, 3, 3, 3)
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (y,) = run(result.model, x=x)
    assert y.shape == (3, 4)


# --- class 11: static shape arithmetic ---------------------------------------------------------


def test_jax2tf_shape_arithmetic_folds_and_the_batch_stays_dynamic():
    for build, prunable, channels in (
        (rw.jax2tf_shape_arithmetic, ["conv1", "conv2"], [8, 8]),
        (rw.jax2tf_glu, ["conv1", "conv2"], [4, 6]),
        (rw.jax2tf_two_rounds, ["conv1"], [8]),
    ):
        model = build()
        analysis = load_and_analyze(model)
        assert not [n for n in analysis.model.graph.node if n.op_type == "Shape" and n.input[0] != "x"]
        groups = [g for g in analysis.groups if g.prunable]
        assert [g.name for g in groups] == prunable and [g.channels for g in groups] == channels
        assert analysis.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        result = onnxprune.prune(model, ratio=0.5)
        assert result.report["verification"]["ok"], build.__name__
        x = np.random.default_rng(4).standard_normal((3, 4, 8, 8)).astype(np.float32)
        (y,) = run(result.model, x=x)
        assert y.shape[0] == 3
