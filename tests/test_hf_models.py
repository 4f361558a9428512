"""Issue 15: Hugging Face encoders and decoder LLMs as users export them (tests/hf_zoo.py): BERT,
DistilBERT (SDPA's IsNaN/Where guard, masks), GPT-2 (Conv1D as Reshape → Gemm → Reshape, gelu_new's
Pow), Llama and Qwen2 (GQA repeat_kv, decomposed RMSNorm, SwiGLU), with both torch exporters (dynamo
shares one zero bias among the projections). Heads, KV groups and MLP widths prune and verify."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

pytest.importorskip("transformers")

import hf_zoo  # noqa: E402
from hf_zoo import HEADS, HIDDEN, KV_HEADS, MLP  # noqa: E402
from test_transformers import masked_export  # noqa: E402

import onnxprune  # noqa: E402

EXPORTERS = ("torchscript", "dynamo")


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """Factory (family, exporter) -> path of the export, each exported once per session."""
    cache = {}
    root = tmp_path_factory.mktemp("hf")

    def get(name: str, exporter: str):
        """`exporter`: torchscript or dynamo, with `-dynamic` for dynamic batch and sequence axes."""
        if (name, exporter) not in cache:
            path = root / exporter / f"{name}.onnx"
            dynamo, dynamic = exporter.startswith("dynamo"), exporter.endswith("-dynamic")
            cache[name, exporter] = hf_zoo.export(name, path, dynamo=dynamo, dynamic=dynamic)
        return cache[name, exporter]

    return get


def head_channels(name: str) -> int:
    """Channels of a head group: KV groups under GQA, else heads."""
    return KV_HEADS if name in ("llama", "qwen2") else HEADS


def prunable(groups) -> list[int]:
    return sorted(g.channels for g in groups if not g.frozen)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(hf_zoo.FAMILIES))
def test_heads_and_mlp_prune_and_verify(hf_model, name, exporter):
    path = hf_model(name, exporter)
    groups = onnxprune.analyze(onnx.load(str(path)))
    mlp = 4 * HIDDEN if name == "gpt2" else MLP  # GPT-2's MLP is 4 × n_embd
    assert prunable(groups) == sorted([head_channels(name)] * 2 + [mlp] * 2)
    result = onnxprune.prune(path, ratio=0.5)
    assert result.report["verification"]["ok"]
    kept = sorted((g["channels"], g["kept"]) for g in result.report["groups"] if g["frozen"] is None)
    assert kept == sorted([(head_channels(name), head_channels(name) // 2)] * 2 + [(mlp, mlp // 2)] * 2)
    assert result.report["after"]["macs"] < 0.75 * result.report["before"]["macs"]
    if exporter == "torchscript":  # independent check: the export with the pruned slices zeroed
        assert_matches_masked(path, result)


def run(model: onnx.ModelProto, seed: int) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids, mask = (t.numpy() for t in hf_zoo.example_inputs(seed=seed))
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def assert_matches_masked(path, result) -> None:
    """The pruned model equals the masked export on token ids the verification did not use."""
    masked = masked_export(path, result.plan)
    for seed in (1, 2):
        got, want = run(result.model, seed), run(masked, seed)
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())


@pytest.mark.parametrize("exporter", ["torchscript-dynamic", "dynamo-dynamic"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_dynamic_axes_exports_prune_and_verify(hf_model, name, exporter):
    """GPT-2's Conv1D views [batch, seq, C] as [batch*seq, C]; TorchScript's repeat_kv expands to
    a target computed from Shape nodes: both must prune with symbolic batch and sequence."""
    result = onnxprune.prune(hf_model(name, exporter), ratio=0.5, prune_residual=True)
    assert result.report["verification"]["ok"]
    kept = sorted((g["channels"], g["kept"]) for g in result.report["groups"] if g["frozen"] is None)
    mlp = 4 * HIDDEN if name == "gpt2" else MLP
    heads = head_channels(name)
    assert kept == sorted([(heads, heads // 2)] * 2 + [(mlp, mlp // 2)] * 2 + [(HIDDEN, HIDDEN // 2)])


def projection_widths(model: onnx.ModelProto) -> list[int]:
    """Output widths of the 2-D MatMul weights, in graph order."""
    weights = {init.name: init for init in model.graph.initializer}
    return [
        weights[node.input[1]].dims[1]
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2
    ]


def test_gqa_prunes_whole_kv_groups_with_their_query_heads(hf_model):
    result = onnxprune.prune(hf_model("llama", "torchscript"), ratio=0.5)
    head_dim = HIDDEN // HEADS
    # per layer: q (4 heads → 2), k and v (2 KV heads → 1), o (in: 2 heads), gate, up, down; then the LM head
    widths = projection_widths(result.model)
    assert widths[:7] == [2 * head_dim, head_dim, head_dim, HIDDEN, MLP // 2, MLP // 2, HIDDEN]
    assert result.report["verification"]["ok"]
    assert_matches_masked(hf_model("llama", "torchscript"), result)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_prune_residual_prunes_the_hidden_size_through_every_norm(hf_model, name, exporter):
    result = onnxprune.prune(hf_model(name, exporter), ratio=0.5, prune_residual=True)
    assert result.report["verification"]["ok"]
    residual = [g for g in result.report["groups"] if g["channels"] == HIDDEN and g["frozen"] is None]
    assert [g["kept"] for g in residual] == [HIDDEN // 2]
    embedding = max(result.model.graph.initializer, key=lambda init: np.prod(init.dims))
    assert sorted(numpy_helper.to_array(embedding).shape) == [HIDDEN // 2, hf_zoo.VOCAB]


def test_encoders_keep_the_hidden_size_their_output_exposes(hf_model):
    result = onnxprune.prune(hf_model("bert", "torchscript"), ratio=0.5, prune_residual=True)
    (residual,) = [g for g in result.report["groups"] if g["channels"] == HIDDEN and len(g["members"]) > 20]
    assert "graph output" in residual["frozen"]
