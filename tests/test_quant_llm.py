"""Quantized LLM weights (issue 15): fp16 transformers, bf16 stored weights, and ONNX Runtime's
4-bit `MatMulNBits` pruned in its packed format (whole rows for output channels, whole blocks of
`block_size` for input channels) and verified against the masked reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from plan_checks import independent_plan_check

from onnxprune import prune
from onnxprune.analysis.cost import model_macs, model_params
from onnxprune.api import load_and_analyze
from onnxprune.errors import InputError
from onnxprune.model import nbits
from onnxprune.model.runtime import run_model

RNG = np.random.default_rng(0)


# ---- fp16 / bf16 conversions of a float model ------------------------------------------------


def _cast_io(graph: onnx.GraphProto, to: int) -> None:
    """Float graph inputs and outputs stay float: a Cast to `to` after each input, to float before each output."""
    head = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == T.FLOAT:
            inner = f"{value.name}__cast"
            for node in graph.node:
                node.input[:] = [inner if n == value.name else n for n in node.input]
            head.append(h.make_node("Cast", [value.name], [inner], to=to))
    for value in graph.output:
        if value.type.tensor_type.elem_type == T.FLOAT:
            inner = f"{value.name}__cast"
            for node in graph.node:
                node.output[:] = [inner if n == value.name else n for n in node.output]
                node.input[:] = [inner if n == value.name else n for n in node.input]
            graph.node.append(h.make_node("Cast", [inner], [value.name], to=T.FLOAT))
    nodes = head + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model computing in float16: float initializers, Constant values and Cast targets become
    float16, float graph inputs and outputs stay float (Casts at the boundary)."""
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == T.FLOAT:
            init.CopyFrom(nh.from_array(nh.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i == T.FLOAT:
                a.i = T.FLOAT16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == T.FLOAT:
                a.t.CopyFrom(nh.from_array(nh.to_array(a.t).astype(np.float16), a.t.name))
    _cast_io(graph, T.FLOAT16)
    del graph.value_info[:]
    return model


def bfloat16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its float weights stored as bfloat16, each read through Cast(to float)."""
    graph, casts = model.graph, []
    for init in graph.initializer:
        if init.data_type == T.FLOAT and int(np.prod(init.dims)) > 1:
            value, name = nh.to_array(init), init.name
            init.CopyFrom(h.make_tensor(f"{name}__bf16", T.BFLOAT16, value.shape, value.reshape(-1).tolist()))
            casts.append(h.make_node("Cast", [f"{name}__bf16"], [name], to=T.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    pytest.importorskip("torch")
    from transformer_zoo import export_transformer

    path = tmp_path_factory.mktemp("quant_llm") / "bert.onnx"
    return onnx.load(str(export_transformer("bert", path, dynamo=False)))


def _pruned_groups(result) -> list[dict]:
    return [g for g in result.plan["groups"] if len(g["kept"]) < g["channels"]]


def test_fp16_transformer_prunes_and_verifies(bert_export):
    model = to_float16(onnx.ModelProto.FromString(bert_export.SerializeToString()))
    onnx.checker.check_model(model)
    result = prune(model, ratio=0.5)
    verification = result.report["verification"]
    assert verification["ok"], verification
    assert len(_pruned_groups(result)) >= 4  # heads and MLP widths of both blocks
    stored = {i.data_type for i in result.model.graph.initializer if len(i.dims) >= 1 and np.prod(i.dims) > 1}
    assert T.FLOAT16 in stored and T.FLOAT not in stored  # computes in float16 still
    assert verification["tolerance"] <= 1e-2
    assert independent_plan_check(model, result.model, result.plan) > 0


def test_bf16_stored_weights_stay_bf16(bert_export):
    model = bfloat16_weights(onnx.ModelProto.FromString(bert_export.SerializeToString()))
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"], result.report["verification"]
    assert _pruned_groups(result)
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    sliced = [name for name in result.plan["weights"] if name.endswith("__bf16")]
    assert sliced and all(stored[name] == T.BFLOAT16 for name in sliced)
    assert not any(name + "__bf16" in stored for name in stored)  # no folded float copy beside them
    assert "derived" not in result.plan or not any(n.endswith("__bf16") for n in result.plan["derived"])
    assert independent_plan_check(model, result.model, result.plan) == len(result.plan["weights"])


# ---- MatMulNBits ------------------------------------------------------------------------------


def float_mlp(widths: tuple[int, ...], batch: tuple[int, int] = (2, 8)) -> onnx.ModelProto:
    """MatMul → Add(bias) → Relu per layer."""
    nodes, inits, x = [], [], "x"
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        inits += [
            nh.from_array((RNG.standard_normal((a, b)) * 0.2).astype(np.float32), f"w{k}"),
            nh.from_array(RNG.standard_normal(b).astype(np.float32) * 0.1, f"b{k}"),
        ]
        nodes += [
            h.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]),
            h.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"]),
            h.make_node("Relu", [f"a{k}"], [f"r{k}"]),
        ]
        x = f"r{k}"
    nodes[-1].output[0] = "out"
    graph = h.make_graph(
        nodes,
        "mlp",
        [h.make_tensor_value_info("x", T.FLOAT, [*batch, widths[0]])],
        [h.make_tensor_value_info("out", T.FLOAT, [*batch, widths[-1]])],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def quantized_mlp(widths: tuple[int, ...], block_size: int = 32, symmetric: bool = False) -> onnx.ModelProto:
    """The MLP with every MatMul quantized by ONNX Runtime's MatMulNBitsQuantizer (4 bits)."""
    quantizer = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    q = quantizer.MatMulNBitsQuantizer(float_mlp(widths), block_size=block_size, is_symmetric=symmetric)
    q.process()
    model = q.model.model
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == len(widths) - 1
    return model


def _tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: nh.to_array(i) for i in model.graph.initializer}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: h.get_attribute_value(a) for a in node.attribute}


def dense_forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The MLP in numpy from its MatMulNBits tensors (dequantized by `model/nbits.py`), as a check
    independent of ONNX Runtime's kernels."""
    values, y = _tensors(model), x
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            att = _attrs(node)
            zero = values[node.input[3]] if len(node.input) > 3 and node.input[3] else None
            w = nbits.dequantize(values[node.input[1]], values[node.input[2]], zero, att["bits"])
            y = y @ w.reshape(att["N"], -1)[:, : att["K"]].T
            if len(node.input) > 5 and node.input[5]:
                y = y + values[node.input[5]]
        elif node.op_type == "Add":
            y = y + values[node.input[1]]
        elif node.op_type == "Relu":
            y = np.maximum(y, 0)
    return y


@pytest.mark.parametrize("symmetric", [False, True], ids=["zero_points", "symmetric"])
def test_matmulnbits_mlp_prunes_rows_and_whole_blocks(symmetric):
    model = quantized_mlp((64, 128, 96, 64), symmetric=symmetric)
    source = onnx.ModelProto.FromString(model.SerializeToString())
    analysis = load_and_analyze(model)
    hidden = [g for g in analysis.groups if g.prunable]
    assert sorted(g.channels for g in hidden) == [3, 4]  # 128 / 32 and 96 / 32 blocks
    result = prune(model, ratio=0.5)
    verification = result.report["verification"]
    assert verification["ok"] and verification["max_relative"] < 1e-5, verification
    nodes = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    values = _tensors(result.model)
    shapes = [(_attrs(n)["K"], _attrs(n)["N"]) for n in nodes]
    kept = shapes[1][1]
    assert shapes == [(64, 64), (64, kept), (kept, 64)] and kept in (32, 64)  # half the blocks of each hidden width
    for node, (k, n) in zip(nodes, shapes):
        assert k % 32 == 0 and values[node.input[1]].shape == (n, k // 32, 16)
        assert values[node.input[2]].shape == (n, k // 32)
        if not symmetric:
            assert values[node.input[3]].shape == (n, (k // 32 + 1) // 2)
    x = RNG.standard_normal((2, 8, 64)).astype(np.float32)
    got = run_model(result.model, {"x": x})["out"]
    np.testing.assert_allclose(got, dense_forward(result.model, x), rtol=1e-4, atol=1e-4)
    # the pruned layers are the original ones without the dropped rows and blocks
    kept_rows = result.plan["weights"]["w0_Q4"]["kept"]["0"]
    assert len(kept_rows) == 64 and all(len(kept_rows[i : i + 32]) == 32 for i in (0, 32))
    assert {r // 32 for r in kept_rows[:32]} == {kept_rows[0] // 32}  # whole blocks
    original = _tensors(source)
    np.testing.assert_array_equal(values["w0_Q4"], original["w0_Q4"][kept_rows])
    blocks = result.plan["weights"]["w1_Q4"]["kept"]["1"]
    assert blocks == sorted({r // 32 for r in kept_rows})
    independent = {k: v for k, v in result.plan["weights"].items() if v.get("exact") is not False}
    independent_plan_check(source, result.model, {"weights": independent})
    if not symmetric:
        entry = result.plan["weights"]["w1_zero_points"]
        assert entry["exact"] is False and entry["packed"]["kept"] == blocks


def test_matmulnbits_scores_the_dequantized_weight():
    model = quantized_mlp((64, 128, 64))
    tensors = _tensors(model)
    w = nbits.dequantize(tensors["w0_Q4"], tensors["w0_scales"], tensors["w0_zero_points"], 4)
    rows = np.abs(w).sum(axis=(1, 2))
    per_block = (rows / rows.mean()).reshape(4, 32).mean(axis=1)
    result = prune(model, ratio=0.5, verify=False)
    kept = result.plan["weights"]["w1_Q4"]["kept"]["1"]
    assert kept == sorted(np.argsort(per_block)[-2:].tolist())


def test_matmulnbits_input_channels_not_in_whole_blocks_are_frozen_with_a_reason():
    model = quantized_mlp((64, 80, 64))  # K = 80 of the second layer: its last block is padded
    analysis = load_and_analyze(model)
    hidden = next(g for g in analysis.groups if g.channels == 80)
    assert hidden.frozen is not None and "K=80 is not a multiple of block_size=32" in hidden.frozen
    with pytest.raises(InputError, match="not a multiple of block_size"):
        prune(model, ratio=0.5)


def test_matmulnbits_macs_and_params_count_the_full_product():
    model = quantized_mlp((64, 128, 64))
    macs = model_macs(load_and_analyze(model).view)
    assert sorted(v for v in macs.values() if v) == [2 * 8 * 64 * 128, 2 * 8 * 128 * 64]
    scales_and_biases = 128 * 2 + 64 * 4 + 128 + 64
    assert model_params(model) == 2 * 64 * 128 + scales_and_biases  # K x N values, not packed bytes
    result = prune(model, target_params=0.6, verify=False)
    before, after = result.report["before"], result.report["after"]
    assert before["params"] == 2 * 64 * 128 + scales_and_biases
    assert after["params"] == 2 * 64 * 64 + 64 * 2 + 64 * 2 + 64 + 64  # half the hidden blocks kept


def nbits_layer(prefix: str, x: str, y: str, k: int, n: int, block: int, zero: str, bias: bool, inits: list):
    """A MatMulNBits node over random stored values (4 bits): `zero` 'packed' (uint8), 'float'
    (of the scales' type) or 'none' (the default 8); with a bias input."""
    n_blocks = k // block
    q = RNG.integers(0, 16, size=(n, n_blocks, block)).astype(np.uint8)
    inits += [
        nh.from_array(nbits.pack(q, 4), f"{prefix}_q"),
        nh.from_array((RNG.random((n, n_blocks)) * 0.05 + 0.01).astype(np.float32), f"{prefix}_scales"),
    ]
    inputs = [x, f"{prefix}_q", f"{prefix}_scales"]
    if zero != "none":
        points = RNG.integers(0, 16, size=(n, n_blocks)).astype(np.uint8)
        value = nbits.pack(points, 4) if zero == "packed" else points.astype(np.float32)
        inits.append(nh.from_array(value, f"{prefix}_zero"))
        inputs.append(f"{prefix}_zero")
    if bias:
        inits.append(nh.from_array(RNG.standard_normal(n).astype(np.float32), f"{prefix}_bias"))
        inputs += [""] * (5 - len(inputs)) + [f"{prefix}_bias"]
    return h.make_node("MatMulNBits", inputs, [y], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)


@pytest.mark.parametrize("zero", ["packed", "float", "none"])
def test_hand_built_matmulnbits_with_bias_and_odd_block_counts(zero):
    inits: list = []
    nodes = [
        nbits_layer("l0", "x", "h0", 48, 80, 16, zero, True, inits),  # 80 = 5 blocks of 16: odd
        h.make_node("Relu", ["h0"], ["r0"]),
        nbits_layer("l1", "r0", "out", 80, 48, 16, zero, False, inits),
    ]
    graph = h.make_graph(
        nodes,
        "nbits",
        [h.make_tensor_value_info("x", T.FLOAT, [3, 48])],
        [h.make_tensor_value_info("out", T.FLOAT, [3, 48])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    result = prune(model, ratio=0.4)
    assert result.report["verification"]["ok"], result.report["verification"]
    layers = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    kept = _attrs(layers[0])["N"]
    assert kept % 16 == 0 and kept < 80 and _attrs(layers[1])["K"] == kept
    values = _tensors(result.model)
    assert values["l0_bias"].shape == (kept,)
    x = RNG.standard_normal((3, 48)).astype(np.float32)
    got = run_model(result.model, {"x": x})["out"]
    np.testing.assert_allclose(got, dense_forward(result.model, x), rtol=1e-4, atol=1e-4)


def test_matmulnbits_with_g_idx_freezes_its_input_channels():
    inits: list = []
    second = nbits_layer("l1", "r0", "out", 64, 32, 16, "packed", False, inits)
    inits.append(nh.from_array(RNG.permutation(np.arange(64) // 16).astype(np.int32), "l1_g_idx"))
    second.input.append("l1_g_idx")
    nodes = [
        nbits_layer("l0", "x", "h0", 32, 64, 16, "packed", False, inits),
        h.make_node("Relu", ["h0"], ["r0"]),
        second,
    ]
    graph = h.make_graph(
        nodes,
        "nbits",
        [h.make_tensor_value_info("x", T.FLOAT, [3, 32])],
        [h.make_tensor_value_info("out", T.FLOAT, [3, 32])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    hidden = next(g for g in load_and_analyze(model).groups if "h0" in {s.tensor for s in g.spaces})
    assert hidden.frozen is not None and "g_idx (act-order)" in hidden.frozen


@pytest.mark.parametrize("criterion", ["mean_act", "taylor"])
def test_matmulnbits_data_criteria_read_the_dequantized_columns(criterion, tmp_path):
    model = quantized_mlp((64, 128, 64))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=RNG.standard_normal((8, 8, 64)).astype(np.float32))
    result = prune(model, criterion=criterion, ratio=0.5, calib=str(calib), batch_size=2)
    assert result.report["verification"]["ok"], result.report["verification"]
    assert len(result.plan["weights"]["w1_Q4"]["kept"]["1"]) == 2


def test_fp16_matmulnbits_mlp_keeps_fp16_scales():
    model = to_float16(quantized_mlp((64, 128, 64)))
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"], result.report["verification"]
    values = _tensors(result.model)
    assert values["w0_scales"].dtype == np.float16 and values["w0_scales"].shape == (64, 2)
    assert values["w1_Q4"].shape == (64, 2, 16)


# ---- a Hugging Face Llama (GQA, RMSNorm, SwiGLU), in fp16 and with 4-bit MatMulNBits ---------


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    pytest.importorskip("transformers")
    import hf_zoo

    path = hf_zoo.export("llama", tmp_path_factory.mktemp("quant_llama") / "llama.onnx", dynamo=False)
    return onnx.load(str(path))


def test_fp16_llama_prunes_heads_and_mlp_and_verifies(hf_llama):
    model = to_float16(onnx.ModelProto.FromString(hf_llama.SerializeToString()))
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"], result.report["verification"]
    assert len(_pruned_groups(result)) >= 2
    assert result.report["after"]["params"] < result.report["before"]["params"]


def test_matmulnbits_llama_prunes_whole_blocks_and_verifies(hf_llama):
    quantizer = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    q = quantizer.MatMulNBitsQuantizer(onnx.ModelProto.FromString(hf_llama.SerializeToString()), block_size=16)
    q.process()
    model = q.model.model
    layers = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(layers) >= 7  # q, k, v, o, gate, up, down of each block (and the head)
    result = prune(model, ratio=0.5)
    verification = result.report["verification"]
    assert verification["ok"] and verification["max_relative"] < 1e-5, verification
    assert len(_pruned_groups(result)) >= 2
    pruned = {n.name: _attrs(n) for n in result.model.graph.node if n.op_type == "MatMulNBits"}
    before = {n.name: _attrs(n) for n in layers}
    changed = [
        name for name in pruned if (pruned[name]["K"], pruned[name]["N"]) != (before[name]["K"], before[name]["N"])
    ]
    assert changed and all(pruned[n]["K"] % 16 == 0 for n in changed)  # input channels: whole blocks
    assert pruned["/model/model/layers.0/self_attn/k_proj/MatMul_Q4"]["N"] == 8  # output rows: one KV head of 8


def test_reconstruction_leaves_packed_weights_with_a_note(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=RNG.standard_normal((8, 8, 64)).astype(np.float32))
    result = prune(quantized_mlp((64, 128, 64)), ratio=0.5, calib=str(calib), batch_size=2, reconstruct=True)
    assert result.report["verification"]["ok"]
    skipped = result.report["reconstruction"]["skipped"]
    assert len(skipped) == 1 and "stored packed (MatMulNBits)" in skipped[0]


@pytest.mark.parametrize("optimize", [False, True])
def test_large_bf16_weights_are_fed_from_memory(optimize):
    w = (RNG.standard_normal((64, 64)) * 0.1).astype(np.float32)
    weight = h.make_tensor("w", T.BFLOAT16, w.shape, w.reshape(-1).tolist())
    graph = h.make_graph(
        [h.make_node("Cast", ["w"], ["wf"], to=T.FLOAT), h.make_node("MatMul", ["x", "wf"], ["y"])],
        "bf16",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 64])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 64])],
        [weight],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    stored = nh.to_array(weight).astype(np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x}, optimize=optimize)["y"], x @ stored, rtol=1e-5, atol=1e-5)


def test_qdq_int4_blocked_weights_keep_uint4_and_whole_blocks():
    quantizer = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    from onnxruntime.quantization import QuantFormat

    q = quantizer.MatMulNBitsQuantizer(float_mlp((64, 128, 96, 64)), block_size=32, quant_format=QuantFormat.QDQ)
    q.process()
    model = q.model.model
    source = onnx.ModelProto.FromString(model.SerializeToString())
    result = prune(model, ratio=0.5)
    assert result.report["verification"]["ok"], result.report["verification"]
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert all(stored[f"w{k}_DQ_Q4"] in (T.UINT4, T.INT4) for k in range(3))  # not folded to float
    kept = result.plan["weights"]["w1_DQ_Q4"]["kept"]["0"]  # the blocked (input) axis: whole blocks of 32
    assert len(kept) % 32 == 0 and kept == sorted(b * 32 + j for b in {i // 32 for i in kept} for j in range(32))
    assert independent_plan_check(source, result.model, result.plan) == len(result.plan["weights"])
    assert len(result.model.SerializeToString()) < len(source.SerializeToString())
