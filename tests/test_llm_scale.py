"""The Llama-architecture generator of benchmarks/llm_graph.py at a tiny size: it prunes and
verifies, and the big-model paths (weights memory-mapped from the external data file, the model
written tensor by tensor, verification run segment by segment) give what the in-memory ones give."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.model import io, segments
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import make_session, run_model
from onnxprune.model.tensors import initializers, is_mapped

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from llm_graph import LlamaSpec, write_llama  # noqa: E402

TINY = LlamaSpec(hidden=64, layers=2, heads=4, kv_heads=2, vocab=256, seq=8)


@pytest.fixture
def tiny_llama(tmp_path) -> Path:
    path = tmp_path / "llama.onnx"
    size = write_llama(path, TINY)
    assert size >= TINY.weight_bytes() and (tmp_path / "llama.onnx.data").exists()
    return path


def test_generated_llama_runs_and_prunes_with_verification(tiny_llama):
    model = onnx.load(tiny_llama)
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"Gather", "Pow", "ReduceMean", "Sqrt", "Div", "Expand", "Softmax", "Sigmoid", "MatMul"} <= ops
    result = onnxprune.prune(tiny_llama, ratio=0.5)
    assert result.report["verification"]["ok"]
    pruned = [g for g in result.report["groups"] if g["kept"] < g["channels"]]
    assert pruned, "the MLP and attention groups are pruned"


def test_external_weights_are_memory_mapped_not_read_in(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setattr(io, "MAP_BYTES", 1024)
    loaded = io.load_model(tiny_llama).model
    big = [init for init in loaded.graph.initializer if init.dims and np.prod(init.dims) * 4 > 1024]
    assert big and all(is_mapped(init) and not init.raw_data for init in big)
    arrays = initializers(loaded)
    assert all(isinstance(arrays[init.name], np.memmap) for init in big)
    in_memory = onnx.load(tiny_llama)  # onnx reads the external data into the model
    for init in in_memory.graph.initializer:
        np.testing.assert_array_equal(arrays[init.name], onnx.numpy_helper.to_array(init))
    feeds = random_inputs(in_memory, 0)
    whole = make_session(loaded, in_memory=False)  # serialized whole: the maps are read in
    np.testing.assert_array_equal(whole.run(None, feeds)[0], run_model(in_memory, feeds)["logits"])
    out = tmp_path / "copy.onnx"
    io.save_model(loaded, out)  # written tensor by tensor from the maps, as one file
    assert not list(tmp_path.glob("copy.onnx.*"))
    saved = onnx.load(out)
    onnx.checker.check_model(saved)
    for init, again in zip(in_memory.graph.initializer, saved.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(again), onnx.numpy_helper.to_array(init))


def test_mapped_model_prunes_and_verifies_segment_by_segment(tiny_llama, monkeypatch):
    feeds = random_inputs(onnx.load(tiny_llama), 0)
    expected = run_model(onnx.load(tiny_llama), feeds)
    monkeypatch.setattr(io, "MAP_BYTES", 1024)
    monkeypatch.setattr(segments, "SEGMENTED_BYTES", 0)
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 16 << 10)
    loaded = io.load_model(tiny_llama).model
    assert len(segments.plan_segments(loaded)) > 4
    got = run_model(loaded, feeds)
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-5, atol=1e-6)
    result = onnxprune.prune(tiny_llama, ratio=0.5)
    assert result.report["verification"]["ok"]


def test_big_decoder_is_verified_at_a_short_sequence(tmp_path, monkeypatch):
    path = tmp_path / "dynamic.onnx"
    write_llama(path, LlamaSpec(hidden=64, layers=2, heads=4, kv_heads=2, vocab=256, seq=32, dynamic=True))
    normal = onnxprune.prune(path, ratio=0.5).report["shapes"]["input_ids"]
    assert normal["shape"] == [1, 16] and "shortened" not in normal["source"]
    monkeypatch.setattr(segments, "SEGMENTED_BYTES", 0)  # every model counts as big
    result = onnxprune.prune(path, ratio=0.5)
    entry = result.report["shapes"]["input_ids"]
    assert entry["shape"] == [1, 8] and "(shortened for a model of 0.0 GB)" in entry["source"]
    assert result.report["verification"]["ok"]
