"""Calibration of language models: token-id `.npz` files feed every model input by name (a missing
one is a clear error), the data-driven criteria (apoz, mean_act, head_mask, wanda) run on HF BERT and
Llama exports, wanda and mean_act match numpy, and `--eval-tokens` reports the perplexity of a causal
LM before → after pruning, as numpy computes it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from graphs import GraphBuilder
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis.analyze import load_and_analyze
from onnxprune.criteria.scoring import score_groups
from onnxprune.measure.calibration import load_calibration
from onnxprune.model.runtime import run_model

VOCAB, HIDDEN, SEQ = 100, 32, 8  # as in hf_zoo


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """`hf_model(name, exporter)`: path of the tiny `bert` or `llama` of `hf_zoo` (inputs input_ids and
    attention_mask), exported by TorchScript at batch 1 and sequence 8 (`torchscript`) or with
    dynamic batch and sequence (`torchscript-dynamic`), once per session."""
    pytest.importorskip("transformers")
    import hf_zoo

    cache: dict[tuple[str, str], str] = {}
    root = tmp_path_factory.mktemp("hf")

    def get(name: str, exporter: str = "torchscript") -> str:
        if (name, exporter) not in cache:
            path = root / exporter / f"{name}.onnx"
            cache[name, exporter] = str(hf_zoo.export(name, path, dynamo=False, dynamic=exporter.endswith("-dynamic")))
        return cache[name, exporter]

    return get


def token_file(path, count: int = 12, seed: int = 0, mask_tail: bool = False, **extra):
    """A .npz of `count` token sequences (input_ids, attention_mask int64) plus `extra` arrays."""
    rng = np.random.default_rng(seed)
    mask = np.ones((count, SEQ), np.int64)
    if mask_tail:
        mask[::2, -3:] = 0  # every other sequence is padded at the end
    np.savez(path, input_ids=rng.integers(0, VOCAB, (count, SEQ)), attention_mask=mask, **extra)
    return path


# --- feeding several inputs ------------------------------------------------------------------


def two_input_model(batch="N") -> onnx.ModelProto:
    """input_ids [N, T] int64 and attention_mask [N, T] int64 -> their float sum [N, T]."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, SEQ])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, SEQ])
    nodes = [
        helper.make_node("Add", ["input_ids", "attention_mask"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["y"], to=TensorProto.FLOAT),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "two", [ids, mask], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_input_is_fed_by_name_and_sliced_alike(tmp_path):
    ids = np.arange(10 * SEQ, dtype=np.int64).reshape(10, SEQ)
    mask = ids % 2
    np.savez(tmp_path / "t.npz", attention_mask=mask, input_ids=ids.astype(np.uint8), y=np.arange(10))
    data = load_calibration(tmp_path / "t.npz", two_input_model(), samples=7, batch_size=3)
    batches = list(data.batches())
    assert [len(f["input_ids"]) for f, _ in batches] == [3, 3, 1] and data.samples == 7
    got_ids = np.concatenate([f["input_ids"] for f, _ in batches])
    got_mask = np.concatenate([f["attention_mask"] for f, _ in batches])
    # uint8 token ids are integers, not images: cast to int64, never scaled by the preprocessing
    assert got_ids.dtype == np.int64 and got_mask.dtype == np.int64
    np.testing.assert_array_equal(got_ids, ids[:7])
    np.testing.assert_array_equal(got_mask, mask[:7])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(7))


def test_a_fixed_batch_size_is_what_the_model_is_fed(tmp_path):
    token_file(tmp_path / "t.npz", count=5)
    data = load_calibration(tmp_path / "t.npz", two_input_model(batch=2), batch_size=64)
    assert data.batch_size == 2 and data.samples == 4
    assert [f["input_ids"].shape for f, _ in data.batches()] == [(2, SEQ), (2, SEQ)]


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"input_ids": np.zeros((4, SEQ), np.int64)}, r"no array for model input 'attention_mask' .*holds 'input_ids'"),
        (
            {"input_ids": np.zeros((4, SEQ), np.int64), "attention_mask": np.ones((3, SEQ), np.int64)},
            "different numbers of samples",
        ),
        (
            {"input_ids": np.full((4, SEQ), 0.5), "attention_mask": np.ones((4, SEQ), np.int64)},
            "'input_ids' takes integers",
        ),
    ],
)
def test_bad_token_files(tmp_path, arrays, match):
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(onnxprune.InputError, match=match):
        load_calibration(tmp_path / "t.npz", two_input_model())
    np.save(tmp_path / "t.npy", np.zeros((4, SEQ), np.int64))
    with pytest.raises(onnxprune.InputError, match=r"\.npy file holds one array, but the model has 2 inputs"):
        load_calibration(tmp_path / "t.npy", two_input_model())


# --- criteria on HF exports ------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["apoz", "mean_act", "head_mask", "wanda"])
def test_criteria_on_bert_token_calibration(hf_model, tmp_path, capsys, criterion):
    """The issue's command: a TorchScript BERT (inputs input_ids and attention_mask, batch 1)
    scored on a token .npz prunes heads 4 → 2 and the MLP 64 → 32, and verifies."""
    calib = token_file(tmp_path / "calib.npz", count=6)
    out, report = tmp_path / "b.onnx", tmp_path / "r.json"
    args = (hf_model("bert"), "--criterion", criterion, "--calib", calib, "--ratio", "0.5", "-o", out)
    code, stdout, stderr = run_cli(capsys, *args, "--report", report)
    assert code == 0, stderr
    result = json.loads(report.read_text())
    assert result["verification"]["ok"] and result["options"]["calib_samples"] == 6
    kept = sorted((g["channels"], g["kept"]) for g in result["groups"] if g["frozen"] is None)
    assert kept == [(4, 2), (4, 2), (64, 32), (64, 32)], kept


def test_a_missing_input_names_it(hf_model, tmp_path, capsys):
    np.savez(tmp_path / "ids.npz", input_ids=np.zeros((4, SEQ), np.int64))
    code, _, err = run_cli(capsys, hf_model("bert"), "--criterion", "apoz", "--calib", tmp_path / "ids.npz")
    assert code == 2
    assert "--calib" in err and "'attention_mask'" in err and "'input_ids'" in err and "internal error" not in err


def attention_outputs(path: str, calib, tensor: str) -> np.ndarray:
    """`tensor` of the model on every calibration sample, concatenated: [samples, ...]."""
    model = onnx.load(path)
    model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    data = load_calibration(calib, model, batch_size=1)
    return np.concatenate([run_model(model, feeds)[tensor] for feeds, _ in data.batches()])


def test_mean_act_of_a_head_is_the_mean_over_its_channels(hf_model, tmp_path):
    """mean_act per head = mean |attention output| over samples, positions and the head's 8
    channels (divided by the mean over the space, as every criterion's scores are)."""
    path, calib = hf_model("bert"), token_file(tmp_path / "calib.npz", count=4)
    analysis = load_and_analyze(path)
    scores = score_groups(analysis, "mean_act", data=load_calibration(calib, analysis.model))
    heads = [g for g in analysis.groups if g.prunable and g.channels == 4]
    for group in heads:
        (consumer,) = group.members_with("in")
        activation = attention_outputs(path, calib, consumer.partner.tensor)  # [samples, SEQ, HIDDEN]
        per_atom = np.abs(activation.astype(np.float64)).mean(axis=(0, 1))
        expected = per_atom.reshape(4, HIDDEN // 4).mean(axis=1) / per_atom.mean()
        np.testing.assert_allclose(scores[group.id], expected, rtol=1e-6)


def test_wanda_on_llama_and_reconstruction_with_tokens(hf_model, tmp_path):
    """Wanda and least-squares reconstruction on a Llama export with token calibration; the
    perplexity before → after is reported (the weights are random: it stays near the vocab size)."""
    path = hf_model("llama", "torchscript-dynamic")  # batches of 16 and 8 sequences
    calib, held_out = token_file(tmp_path / "c.npz", count=16), token_file(tmp_path / "e.npz", count=8, seed=1)
    plain = onnxprune.prune(path, criterion="wanda", calib=str(calib), eval_tokens=str(held_out))
    rebuilt = onnxprune.prune(path, criterion="wanda", calib=str(calib), eval_tokens=str(held_out), reconstruct=True)
    for result in (plain, rebuilt):
        ppl = result.report["perplexity"]
        assert result.report["verification"]["ok"] and ppl["tokens"] == 8 * (SEQ - 1)
        assert 0.5 * VOCAB < ppl["before"] < 2 * VOCAB and np.isfinite(ppl["after"])
    assert plain.report["perplexity"]["before"] == rebuilt.report["perplexity"]["before"]
    recon = rebuilt.report["reconstruction"]
    assert recon["layers"] > 0 and recon["output_error_after"] <= recon["output_error_before"]


def test_eval_tokens_refuses_a_model_without_logits(hf_model, tmp_path, capsys):
    """BERT returns hidden states [1, 8, 32], not logits over its 100-token vocabulary."""
    held_out = token_file(tmp_path / "e.npz")
    code, _, err = run_cli(capsys, hf_model("bert"), "--eval-tokens", held_out, "-o", tmp_path / "b.onnx")
    assert code == 2 and "--eval-tokens" in err and "logits" in err and "100 tokens" in err
    assert not (tmp_path / "b.onnx").exists()


# --- numpy references --------------------------------------------------------------------------


def mlp(tokens: bool = False) -> onnx.ModelProto:
    """x [N, 6] (or [N, T, 6]) -> MatMul W1 [6, 8] + b1 -> Relu -> MatMul W2 [8, 4] + b2."""
    g = GraphBuilder(shape=("N", 5, 6) if tokens else ("N", 6))
    hidden = g.op("Relu", g.op("Add", g.op("MatMul", "x", g.weight(6, 8)), g.weight(8)))
    return g.model(g.op("Add", g.op("MatMul", hidden, g.weight(8, 4)), g.weight(4)))


@pytest.mark.parametrize("tokens", [False, True])
def test_wanda_equals_numpy_on_a_two_layer_mlp(tmp_path, tokens):
    """score_j = Σ_i |W2[j, i]| · ‖relu(x W1 + b1)_j‖₂ over every sample (and token), divided by
    the mean (as every criterion's scores are)."""
    model = mlp(tokens)
    w1, b1, w2, _ = (numpy_helper.to_array(i) for i in model.graph.initializer)  # in the order added
    x = np.random.default_rng(3).standard_normal((10, 5, 6) if tokens else (10, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    onnx.save(model, tmp_path / "mlp.onnx")
    analysis = load_and_analyze(str(tmp_path / "mlp.onnx"))
    (group,) = [g for g in analysis.groups if g.prunable]
    got = score_groups(analysis, "wanda", data=load_calibration(tmp_path / "c.npz", analysis.model, batch_size=4))
    hidden = np.maximum(x.astype(np.float64) @ w1 + b1, 0).reshape(-1, 8)
    raw = np.abs(w2.astype(np.float64)).sum(axis=1) * np.sqrt((hidden**2).sum(axis=0))
    np.testing.assert_allclose(got[group.id], raw / raw.mean(), rtol=1e-5)


def tiny_lm() -> onnx.ModelProto:
    """input_ids [N, T] -> Gather(E [V, 6]) -> MatMul W1 [6, 8] -> Relu -> MatMul W2 [8, V]: logits,
    times the attention mask (so the model reads it)."""
    g = GraphBuilder()
    g.inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "T"]),
    ]
    embedded = g.op("Gather", g.weight(VOCAB, 6), "input_ids", axis=0)
    hidden = g.op("Relu", g.op("MatMul", embedded, g.weight(6, 8)))
    logits = g.op("MatMul", hidden, g.const((0.3 * g.rng.standard_normal((8, VOCAB))).astype(np.float32)))
    mask = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.FLOAT), g.const(np.array([-1])))
    return g.model(g.op("Mul", logits, mask))


def numpy_perplexity(model: onnx.ModelProto, ids: np.ndarray, mask: np.ndarray) -> float:
    """exp(mean −log softmax(logits_t)[id_{t+1}]) over the targets whose mask is 1, in numpy (the
    weights of `model` by the names `tiny_lm` gives them)."""
    names = [i.name for i in tiny_lm().graph.initializer][:3]  # E, W1, W2 in the order added
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    table, w1, w2 = (w[n] for n in names)
    logits = np.maximum(table[ids] @ w1, 0) @ w2 * mask[..., None]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return float(np.exp(nll[mask[:, 1:] == 1].mean()))


def test_perplexity_equals_numpy_and_the_report_carries_both(tmp_path, capsys):
    onnx.save(tiny_lm(), tmp_path / "lm.onnx")
    held_out = token_file(tmp_path / "e.npz", count=9, seed=2, mask_tail=True)
    arrays = np.load(held_out)
    code, out, err = run_cli(
        capsys, tmp_path / "lm.onnx", "--eval-tokens", held_out, "--batch-size", "4", "--report", tmp_path / "r.json"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    ppl, pruned = report["perplexity"], onnx.load(tmp_path / "lm.pruned.onnx")
    assert any(g["kept"] < g["channels"] for g in report["groups"])
    before = numpy_perplexity(tiny_lm(), arrays["input_ids"], arrays["attention_mask"])
    after = numpy_perplexity(pruned, arrays["input_ids"], arrays["attention_mask"])
    np.testing.assert_allclose([ppl["before"], ppl["after"]], [before, after], rtol=1e-5)
    assert ppl["tokens"] == int(arrays["attention_mask"][:, 1:].sum()) and ppl["ratio"] == ppl["after"] / ppl["before"]
    assert f"perplexity {before:.2f} → {after:.2f}" in out
