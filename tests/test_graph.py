"""Loading and normalization: Constant-node weights, external data, folded shape arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import GraphBuilder
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.model.io import load_model
from onnxprune.model.normalize import normalize


def model_with_constant_node_weight() -> tuple[onnx.ModelProto, np.ndarray]:
    g = GraphBuilder()
    value = np.random.default_rng(0).standard_normal((6, 4, 3, 3)).astype(np.float32)
    g.nodes.append(helper.make_node("Constant", [], ["wconst"], value=numpy_helper.from_array(value)))
    t = g.op("Relu", g.op("Conv", "x", "wconst", pads=[1, 1, 1, 1]))
    y = g.op("GlobalAveragePool", g.conv(t, 6, 3))
    return g.model(y), value


def test_constant_node_weights_are_lifted_and_sliced():
    model, value = model_with_constant_node_weight()
    normalized = normalize(model)
    assert "wconst" in {i.name for i in normalized.graph.initializer}
    assert not [n for n in normalized.graph.node if n.op_type == "Constant"]
    result = onnxprune.prune(model, ratio=0.5)
    entry = result.plan["weights"]["wconst"]
    assert entry["shape"] == [6, 4, 3, 3] and len(entry["kept"]["0"]) == 3
    pruned = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    np.testing.assert_array_equal(pruned["wconst"], value[entry["kept"]["0"]])


def test_external_data_model_loads_and_prunes(tmp_path):
    model, _ = model_with_constant_node_weight()
    normalized = normalize(model)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        normalized,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_model(path)
    assert all(not init.external_data for init in loaded.model.graph.initializer)
    result = onnxprune.prune(path, ratio=0.5)
    assert result.report["verification"]["ok"]


def test_normalize_keeps_weight_values_and_dynamic_batch():
    model, value = model_with_constant_node_weight()
    normalized = normalize(model)
    weights = {i.name: numpy_helper.to_array(i) for i in normalized.graph.initializer}
    np.testing.assert_array_equal(weights["wconst"], value)
    assert normalized.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
