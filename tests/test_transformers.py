"""Issue 9: attention heads and MLP widths of a tiny ViT and a tiny BERT (tests/transformer_zoo.py),
exported with both exporters with dynamic batch and sequence length.

Each pruned model must equal its masked reference (the export with the pruned weight slices
zeroed) at the exported sequence length *and* at other lengths and batch sizes, run by ONNX
Runtime; head counts are read back from the pruned Reshape targets and weight shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from transformer_zoo import EMBED, HEADS, MLP, build, example_input, export_transformer

import onnxprune
from onnxprune.api import load_and_analyze

EXPORTERS = ("torchscript", "dynamo")
MODELS = ("vit", "bert")
VIT_SHAPES = {"input": (2, 3, 16, 16)}  # verification inputs: 17 tokens
#: sequence lengths other than the exported one (ViT: image sides, (side/4)² + 1 tokens)
OTHER_SIZES = {"vit": (8, 24, 32), "bert": (3, 7, 30)}


@pytest.fixture(scope="session")
def transformer(tmp_path_factory):
    """Factory (name, exporter) -> path of the export, each exported once per session."""
    cache = {}
    root = tmp_path_factory.mktemp("transformers")

    def get(name: str, exporter: str):
        if (name, exporter) not in cache:
            path = root / exporter / f"{name}.onnx"
            cache[name, exporter] = export_transformer(name, path, dynamo=exporter == "dynamo")
        return cache[name, exporter]

    return get


def _shapes(name: str):
    return VIT_SHAPES if name.startswith("vit") else None


def _head_groups(groups):
    return [g for g in groups if g.channels == HEADS and any(m.role == "out" for m in g.members)]


def _mlp_groups(groups):
    return [g for g in groups if g.channels == MLP]


def masked_export(path, plan: dict) -> onnx.ModelProto:
    """The export with every pruned slice of every weight in the plan set to 0 (fill of weights
    and biases; transformers have no divisor or statistics members)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        entry = plan["weights"].get(init.name)
        if entry is None:
            continue
        value = numpy_helper.to_array(init).copy()
        keep = np.ones(value.shape, dtype=bool)
        for axis, kept in entry["kept"].items():
            mask = np.zeros(value.shape[int(axis)], dtype=bool)
            mask[kept] = True
            shape = [1] * value.ndim
            shape[int(axis)] = -1
            keep &= mask.reshape(shape)
        init.CopyFrom(numpy_helper.from_array(np.where(keep, value, 0).astype(value.dtype), init.name))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _assert_matches_masked(path, name: str, result) -> None:
    """Pruned == masked reference at the exported and at other sequence lengths, batch 1 and 3."""
    masked = masked_export(path, result.plan)
    for size in (None,) + OTHER_SIZES[name]:
        for batch in (1, 3):
            x = example_input(name, batch, size, seed=batch).numpy()
            got, want = _run(result.model, x), _run(masked, x)
            assert got.shape == want.shape
            scale = max(float(np.abs(want).max()), 1e-6)
            assert float(np.abs(got - want).max()) <= 1e-4 * scale, (name, size, batch)


def _reshape_head_counts(model: onnx.ModelProto) -> list[int]:
    """H of every [.., H, D] entry of the Reshape targets that split heads (constants, or the
    constant pieces of a Concat), read from the pruned model."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    counts = []
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        target = consts.get(node.input[1])
        if target is None and node.input[1] in producers and producers[node.input[1]].op_type == "Concat":
            pieces = [consts.get(p) for p in producers[node.input[1]].input]
            target = np.concatenate([p.reshape(-1) if p is not None else [-7] for p in pieces])
        if target is not None and len(target) >= 4 and target[-1] == EMBED // HEADS:
            counts.append(int(target[-2]))
    return counts


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_heads_and_mlp_are_groups(transformer, name, exporter):
    analysis = load_and_analyze(transformer(name, exporter))
    heads, mlp = _head_groups(analysis.groups), _mlp_groups(analysis.groups)
    assert len(heads) == 2 and all(g.prunable for g in heads), [(g.id, g.frozen) for g in heads]
    assert len(mlp) == 2 and all(g.prunable for g in mlp)
    for group in heads:
        outs = [m for m in group.members if m.role == "out"]
        # q, k, v (fused: one 96-wide weight) and their biases; the out projection reads the heads
        assert sum(analysis.view.shape(m.space.tensor)[m.space.axis] for m in outs) == 3 * EMBED
        assert [analysis.view.shape(m.space.tensor) for m in group.members_with("in")] == [(EMBED, EMBED)]
    frozen = [g.frozen for g in analysis.groups if g.channels == EMBED and g.frozen]
    assert frozen and all(
        "LayerNormalization" in r or "graph" in r or "Gather" in r or "Expand" in r or "Shape" in r or "Reshape" in r
        for r in frozen
    ), frozen


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_prune_heads_and_mlp(transformer, name, exporter, criterion):
    path = transformer(name, exporter)
    result = onnxprune.prune(path, criterion=criterion, ratio=0.5, input_shapes=_shapes(name))
    assert result.report["verification"]["ok"]
    groups = {g["id"]: g for g in result.report["groups"]}
    kept = sorted((g["channels"], g["kept"]) for g in groups.values() if g["channels"] in (HEADS, MLP))
    assert kept == [(HEADS, HEADS // 2)] * 2 + [(MLP, MLP // 2)] * 2
    assert _reshape_head_counts(result.model) == [HEADS // 2] * (2 if name == "vit" else 6)
    shapes = {i.name: tuple(i.dims) for i in result.model.graph.initializer}
    weights = result.plan["weights"]
    widths = sorted(shapes[n][1] for n, w in weights.items() if len(w["shape"]) == 2 and "1" in w["kept"])
    per_block = [3 * EMBED // 2] if name == "vit" else [EMBED // 2] * 3
    assert widths == sorted((per_block + [MLP // 2]) * 2)
    _assert_matches_masked(path, name, result)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_head_mask_criterion(transformer, tmp_path, name, exporter):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=example_input(name, 8, seed=5).numpy())
    path = transformer(name, exporter)
    result = onnxprune.prune(path, criterion="head_mask", ratio=0.5, calib=str(calib), input_shapes=_shapes(name))
    assert result.report["verification"]["ok"]
    _assert_matches_masked(path, name, result)


def test_head_mask_scores_the_head_that_matters(transformer, tmp_path):
    """A head whose value projection is scaled up changes the output most when masked."""
    import torch

    module = build("bert")
    with torch.no_grad():
        block = module.blocks[1].attn
        block.v.weight[8:16] *= 5.0  # head 1 of block 1
    path = export_transformer("bert", tmp_path / "bert.onnx", dynamo=False, module=module)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=example_input("bert", 8, seed=5).numpy())
    analysis = load_and_analyze(path)
    from onnxprune.api import score_groups
    from onnxprune.measure.calibration import load_calibration

    scores = score_groups(analysis, "head_mask", data=load_calibration(str(calib), analysis.model))
    second = _head_groups(analysis.groups)[1]
    assert int(np.argmax(scores[second.id])) == 1, scores[second.id]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_sdpa_vit(transformer, exporter):
    """F.scaled_dot_product_attention: TorchScript decomposes it into MatMul/Softmax; dynamo also
    transposes k through [N*H, T, D] with a target read by Shape, which the analysis replaces by one
    Transpose (passes/simplify_attention.py). Heads prune in both."""
    path = transformer("vit_sdpa", exporter)
    analysis = load_and_analyze(path)
    heads = _head_groups(analysis.groups)
    assert len(heads) == 2 and all(g.prunable for g in heads), [g.frozen for g in heads]
    if exporter == "dynamo":
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count("Reshape") > [n.op_type for n in analysis.model.graph.node].count("Reshape")
    result = onnxprune.prune(path, ratio=0.5, input_shapes=VIT_SHAPES)
    assert result.report["verification"]["ok"]
    assert sorted(g["kept"] for g in result.report["groups"] if g["channels"] == HEADS) == [2, 2]
    _assert_matches_masked(path, "vit", result)


def test_contrib_attention_is_frozen_with_a_reason():
    """com.microsoft.Attention (ORT's fused attention) is not split into heads: its groups
    freeze and say why."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, EMBED])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, EMBED])
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((EMBED, 3 * EMBED)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(3 * EMBED, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((EMBED, EMBED)).astype(np.float32), "wo"),
    ]
    nodes = [
        helper.make_node("Attention", ["x", "w", "b"], ["a"], domain="com.microsoft", num_heads=HEADS),
        helper.make_node("MatMul", ["a", "wo"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    groups = onnxprune.analyze(model)
    reasons = [g.frozen for g in groups]
    assert reasons and all(r for r in reasons)
    assert any("packs its heads" in r for r in reasons), reasons


def _residual_group(groups):
    (group,) = [g for g in groups if g.channels == EMBED and any(m.role == "bn_scale" for m in g.members)]
    return group


@pytest.mark.parametrize("size", [16, 8, 24])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_prune_residual_stream_vit(transformer, exporter, size):
    """--prune-residual: one group through the patch embedding, class token, position embedding,
    every LayerNorm, projection and the head; verified against LayerNorms over the kept
    channels, at several image sizes (sequence lengths). TorchScript's flatten(2) reads the
    channel count from a Shape only to copy it back into the Reshape of the same tensor, and its
    class-token Expand target is Where(Equal([N, -1, -1], -1), 1, ·) = [N, 1, 1]."""
    path = transformer("vit", exporter)
    analysis = load_and_analyze(path, prune_residual=True)
    residual = _residual_group(analysis.groups)
    assert residual.prunable
    scales = {m.space.tensor for m in residual.members if m.role == "bn_scale"}
    assert len(scales) == 5  # 2 blocks x 2 LayerNorms + the final one
    result = onnxprune.prune(path, ratio=0.5, prune_residual=True, input_shapes={"input": (2, 3, size, size)})
    assert result.report["verification"]["ok"]
    shapes = {i.name: tuple(i.dims) for i in result.model.graph.initializer}
    assert {shapes[name] for name in scales} == {(EMBED // 2,)}
    assert shapes["cls"] == (1, 1, EMBED // 2) and shapes["pos"][-1] == EMBED // 2
    assert _reshape_head_counts(result.model) == [HEADS // 2] * 2
    # LayerNorm statistics change: the plain masked export is *not* the reference here
    x = example_input("vit", 2, size).numpy()
    got, plain = _run(result.model, x), _run(masked_export(path, result.plan), x)
    assert np.abs(got - plain).max() > 1e-3 * np.abs(plain).max()


@pytest.mark.parametrize("tokens", [12, 5, 30])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_prune_residual_stream_bert_classifier(transformer, exporter, tokens):
    """A BERT with a pooler and classifier: the residual stream (token and position embeddings,
    every LayerNorm, q/k/v/out/fc1/fc2, the pooler's input) prunes with both exporters, verified
    at several sequence lengths."""
    path = transformer("bert_cls", exporter)
    residual = _residual_group(load_and_analyze(path, prune_residual=True).groups)
    assert residual.prunable
    producers = {m.space.tensor for m in residual.members if m.role == "out"}
    assert {"tokens.weight", "positions.weight"} <= producers  # the embedding tables
    result = onnxprune.prune(path, ratio=0.5, prune_residual=True, input_shapes={"input": (2, tokens)})
    assert result.report["verification"]["ok"]
    shapes = {i.name: tuple(i.dims) for i in result.model.graph.initializer}
    assert shapes["tokens.weight"] == (50, EMBED // 2) and shapes["norm.weight"] == (EMBED // 2,)
    assert _reshape_head_counts(result.model) == [HEADS // 2] * 6


@pytest.mark.parametrize(
    "name,exporter,reason",
    [
        ("bert", "torchscript", "reaches graph output"),  # the hidden states are the output
        ("bert", "dynamo", "reaches graph output"),
    ],
)
def test_prune_residual_frozen_with_a_reason(transformer, name, exporter, reason):
    path = transformer(name, exporter)
    groups = load_and_analyze(path, prune_residual=True).groups
    assert reason in _residual_group(groups).frozen
    result = onnxprune.prune(path, ratio=0.5, prune_residual=True, input_shapes=_shapes(name))
    assert result.report["verification"]["ok"]
    _assert_matches_masked(path, name, result)


def _opset23_attention_model() -> onnx.ModelProto:
    """q/k/v MatMul -> Reshape [0, 0, H, D] -> Transpose -> Attention (opset 23) -> Transpose ->
    Reshape [0, 0, C] -> out MatMul, sequence length dynamic."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    head_dim = EMBED // HEADS
    for p in "qkv":
        w = const(f"w{p}", rng.standard_normal((EMBED, EMBED)).astype(np.float32))
        nodes += [
            helper.make_node("MatMul", ["x", w], [f"{p}0"]),
            helper.make_node("Reshape", [f"{p}0", const(f"s{p}", np.array([0, 0, HEADS, head_dim]))], [f"{p}1"]),
            helper.make_node("Transpose", [f"{p}1"], [p], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Attention", ["q", "k", "v"], ["a"]),
        helper.make_node("Transpose", ["a"], ["a1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["a1", const("so", np.array([0, 0, EMBED]))], ["a2"]),
        helper.make_node("MatMul", ["a2", const("wo", rng.standard_normal((EMBED, EMBED)).astype(np.float32))], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention23",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "T", EMBED])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "T", EMBED])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10  # what ONNX Runtime reads
    return model


def test_opset23_attention_heads():
    """ONNX Attention (opset 23) with 4-D q/k/v: heads pass through it and prune; the pruned model
    runs at other sequence lengths."""
    model = _opset23_attention_model()
    heads = [g for g in onnxprune.analyze(model) if g.channels == HEADS]
    assert len(heads) == 1 and heads[0].prunable
    result = onnxprune.prune(model, ratio=0.5, input_shapes={"x": (2, 5, EMBED)})
    assert result.report["verification"]["ok"]
    assert result.plan["weights"]["wq"]["kept"]["1"] and len(result.plan["weights"]["wq"]["kept"]["1"]) == EMBED // 2
    x = np.random.default_rng(1).standard_normal((3, 11, EMBED)).astype(np.float32)
    assert ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x})[0].shape == (3, 11, EMBED)


def test_cli_shape_and_prune_residual(transformer, tmp_path):
    """`onnxprune vit.onnx --shape input=2x3x16x16 --prune-residual`: written, verified, the
    residual stream halved in every LayerNorm."""
    from onnxprune.cli import main

    out = tmp_path / "vit.pruned.onnx"
    code = main([str(transformer("vit", "dynamo")), "--shape", "input=2x3x16x16", "--prune-residual", "-o", str(out)])
    assert code == 0 and out.exists()
    model = onnx.load(str(out))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    assert shapes["norm.weight"] == (EMBED // 2,) and shapes["blocks.1.norm2.weight"] == (EMBED // 2,)


@pytest.mark.parametrize("name,residual", [("bert_cls", True), ("bert", False)])
def test_check_command_rebuilds_transformer_plans(transformer, tmp_path, name, residual):
    """`onnxprune check` re-verifies a stored pruned transformer (heads, MLP and, with
    --prune-residual, LayerNorms over the kept channels)."""
    from onnxprune.verify.check import check_pruned

    path = transformer(name, "dynamo")
    saved = onnxprune.prune(path, ratio=0.5, prune_residual=residual).save(tmp_path / "pruned.onnx")
    result = check_pruned(saved, path, tmp_path / "pruned.plan.json")
    assert result.ok and not result.bad_weights


@pytest.mark.parametrize("split,replaced", [((2, 4), True), ((4, 2), False)])
def test_simplify_attention_round_trip(split, replaced):
    """Reshape [2, 4, 6, 8] -> [8, 6, 8] -> Transpose -> [8, 8, 6] -> Reshape: splitting back into
    (2, 4) is a Transpose of the last two axes and is replaced; (4, 2) is not, and stays."""
    from onnxprune.model.normalize import normalize
    from onnxprune.model.simplify_attention import simplify_attention

    x = np.random.default_rng(0).standard_normal((2, 4, 6, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["m"]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "s2"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 6, 8]), "s1"),
        numpy_helper.from_array(np.array([*split, 8, 6]), "s2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = normalize(model)
    before = _run_feed(model, {"x": x})
    simplified = simplify_attention(model)
    ops = [n.op_type for n in simplified.graph.node]
    assert ops == (["Transpose", "Relu"] if replaced else ["Reshape", "Transpose", "Reshape", "Relu"])
    np.testing.assert_array_equal(_run_feed(simplified, {"x": x}), before)


def _run_feed(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
