"""Issue 15 (KV cache): a tiny Llama with grouped-query attention (4 query heads, 2 KV heads)
exported WITH its cache: graph inputs ``past_key_values.{i}.key/value`` [batch, kv_heads,
past_seq, head_dim] and outputs ``present.{i}.key/value``, as optimum exports a decoder.

Its head groups (one KV group each) must be prunable although they reach graph inputs and outputs
(analysis/rules/kv_cache.py); the pruned model declares the new head count on its cache I/O, and
two decoding steps in ONNX Runtime -- step 1's presents fed back as step 2's past -- compute what
the masked original computes (the pruned heads' weights zeroed, the full cache).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_zoo  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.analysis.relations import Space  # noqa: E402
from onnxprune.api import load_and_analyze  # noqa: E402
from onnxprune.select.plan import rebuild_plan  # noqa: E402
from onnxprune.verify.check import check_pruned  # noqa: E402
from onnxprune.verify.reference import masked_reference  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM, VOCAB = hf_zoo.LAYERS, hf_zoo.KV_HEADS, hf_zoo.HIDDEN // hf_zoo.HEADS, hf_zoo.VOCAB
PAST, NEW = 2, 3  # cached tokens before step 1, tokens of step 1 (step 2 adds one)
PAST_NAMES, PRESENT_NAMES = hf_zoo.cache_names(LAYERS)
EXPORTERS = ("torchscript", "dynamo")


def _export(path, dynamo: bool):
    """The tiny Llama (hidden 32, 2 layers, 4 heads, 2 KV heads, MLP 64, vocab 100) exported with
    its cache: TorchScript with optimum's dynamic axes (hf_zoo), or dynamo with batch, new tokens,
    mask length and past length dynamic."""
    config = hf_zoo.config("llama")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    if not dynamo:
        return hf_zoo.export_with_cache(model, config, path, past=PAST, new=NEW)
    ids = torch.randint(0, VOCAB, (1, NEW))
    mask = torch.ones(1, PAST + NEW, dtype=torch.long)
    past = tuple(torch.randn(1, KV_HEADS, PAST, HEAD_DIM) for _ in PAST_NAMES)
    dim = torch.export.Dim
    batch, cached = dim("batch", max=64), dim("past", max=64)
    shapes = (
        {0: batch, 1: dim("seq", max=64)},
        {0: batch, 1: dim("total", max=128)},
        tuple({0: batch, 2: cached} for _ in past),
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            hf_zoo.CachedDecoder(model, LAYERS).eval(),
            (ids, mask, *past),
            str(path),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=["input_ids", "attention_mask", *PAST_NAMES],
            output_names=["logits", *PRESENT_NAMES],
        )
    return path


@pytest.fixture(scope="session")
def cached_llama(tmp_path_factory):
    """Factory exporter -> path of the export, each exported once per session."""
    cache = {}
    root = tmp_path_factory.mktemp("kv_cache")

    def get(exporter: str):
        if exporter not in cache:
            cache[exporter] = _export(root / f"llama-kv-{exporter}.onnx", dynamo=exporter == "dynamo")
        return cache[exporter]

    return get


#: the dynamo export names every dim apart (the mask is not seen as past + new): shapes are given
SHAPES = {
    "input_ids": (1, NEW),
    "attention_mask": (1, PAST + NEW),
    **{n: (1, KV_HEADS, PAST, HEAD_DIM) for n in PAST_NAMES},
}


def _cache_group(groups, name: str):
    return next(g for g in groups if Space(name, 1) in g.spaces)


def _declared(model: onnx.ModelProto, name: str) -> list:
    infos = {i.name: i for i in list(model.graph.input) + list(model.graph.output)}
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in infos[name].type.tensor_type.shape.dim]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cache_head_groups_are_prunable(cached_llama, exporter):
    groups = onnxprune.analyze(cached_llama(exporter))
    for layer in range(LAYERS):
        group = _cache_group(groups, f"past_key_values.{layer}.key")
        assert group.prunable, group.frozen
        assert group.channels == KV_HEADS
        # one KV group: its key and value caches, in and out, and the q/k/v/o projections
        spaces = {Space(n, 1) for n in PAST_NAMES + PRESENT_NAMES if n.split(".")[1] == str(layer)}
        assert spaces <= set(group.spaces)
        assert {m.role for m in group.members} >= {"out", "in"}
    logits = next(g for g in groups if any(s.tensor == "logits" for s in g.spaces))
    assert logits.frozen == "reaches graph output 'logits'"  # every other graph I/O stays frozen


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _decode(model: onnx.ModelProto, past: dict, steps) -> list[dict]:
    """Run the decoding steps (input ids each), feeding each step's presents back as the past."""
    outputs = []
    for ids in steps:
        length = next(iter(past.values())).shape[2] + ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, length), dtype=np.int64), **past}
        out = _run(model, feeds)
        outputs.append(out)
        past = {p: out[q] for p, q in zip(PAST_NAMES, PRESENT_NAMES)}
    return outputs


def _close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-4 * scale + 1e-7, f"{what}: max |pruned - masked| {diff:.3g} (scale {scale:.3g})"
    return diff / scale


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_pruned_cache_decodes_like_the_masked_original(cached_llama, exporter, tmp_path):
    path = cached_llama(exporter)
    shapes = SHAPES if exporter == "dynamo" else None  # torchscript: probed (the mask spans past + new)
    result = onnxprune.prune(path, ratio=0.5, input_shapes=shapes)
    assert result.report["verification"]["ok"]
    changed = {n: {"1": {"from": KV_HEADS, "to": KV_HEADS // 2}} for n in PAST_NAMES + PRESENT_NAMES}
    assert result.plan["io_shapes"] == changed and result.report["io_shapes"] == changed
    for name in PAST_NAMES + PRESENT_NAMES:  # the runtime allocates the cache from these shapes
        assert _declared(result.model, name)[1] == KV_HEADS // 2
    assert _declared(result.model, "logits")[2] == VOCAB

    analysis = load_and_analyze(path)
    plan = rebuild_plan(analysis.groups, result.plan)
    masked = masked_reference(analysis.model, plan)
    kept = {}
    for name in PAST_NAMES + PRESENT_NAMES:
        group = _cache_group(analysis.groups, name)
        kept[name] = group.kept_atoms(Space(name, 1), plan.kept[group.id])
    rng = np.random.default_rng(0)
    past = {n: rng.standard_normal((1, KV_HEADS, PAST, HEAD_DIM)).astype(np.float32) for n in PAST_NAMES}
    steps = [rng.integers(0, VOCAB, (1, NEW)), rng.integers(0, VOCAB, (1, 1))]
    want = _decode(masked, past, steps)
    got = _decode(result.model, {n: v[:, kept[n]] for n, v in past.items()}, steps)
    worst = 0.0
    for step, (g, w) in enumerate(zip(got, want), start=1):
        worst = max(worst, _close(g["logits"], w["logits"], f"step {step} logits"))
        for name in PRESENT_NAMES:
            assert g[name].shape == (1, KV_HEADS // 2, PAST + NEW + step - 1, HEAD_DIM)
            assert w[name].shape == (1, KV_HEADS, PAST + NEW + step - 1, HEAD_DIM)
            worst = max(worst, _close(g[name], w[name][:, kept[name]], f"step {step} {name}"))
    original = _decode(analysis.model, past, steps)
    assert not np.allclose(original[1]["logits"], want[1]["logits"])  # the pruned heads mattered
    print(f"{exporter}: worst relative difference pruned vs masked over 2 steps: {worst:.3g}")

    if exporter == "torchscript":  # the stored model re-checked (`onnxprune check`)
        result.save(tmp_path / "pruned.onnx")
        check = check_pruned(tmp_path / "pruned.onnx", path, tmp_path / "pruned.plan.json")
        assert check.ok, check.outputs
