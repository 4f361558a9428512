"""A Llama-architecture decoder as an ONNX graph, written directly with onnx.helper + numpy.

No torch: random weights are generated block by block straight into one external data file
(`<model>.onnx.data`), so a 3 GB model is written with little memory. The graph is the Llama
decoder at a fixed sequence length: Gather embedding, RMSNorm decomposed into
Pow/ReduceMean/Add/Sqrt/Div/Mul, q/k/v/o MatMuls with the head split by Reshape/Transpose,
grouped-query attention (k/v heads repeated by Unsqueeze/Expand/Reshape), causal Softmax
attention, a SwiGLU MLP (gate * Sigmoid(gate) * up -> down) and the LM head.

    from llm_graph import LlamaSpec, write_llama
    size = write_llama(Path("llama.onnx"), LlamaSpec(hidden=1024, layers=8))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

BLOCK_VALUES = 1 << 22  # values generated and written at a time (16 MB of float32)
ALIGN = 4096


@dataclass(frozen=True)
class LlamaSpec:
    """Sizes of the decoder; `heads` query heads of `hidden // heads` channels, `kv_heads` k/v heads."""

    hidden: int = 1024
    layers: int = 8
    intermediate: int | None = None  # default: ~2.75 x hidden, a multiple of 64
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 8192
    seq: int = 8
    #: the sequence is a dynamic dimension 'sequence' (up to `seq`: the causal mask is sliced
    #: from a [seq, seq] constant), else fixed to `seq`
    dynamic: bool = False

    @property
    def ffn(self) -> int:
        """The MLP's inner width."""
        return self.intermediate or max(64, (self.hidden * 11 // 4) // 64 * 64)

    def weight_bytes(self) -> int:
        """float32 bytes of all weights (embedding, layers, final norm, LM head)."""
        head = self.hidden // self.heads
        per_layer = (
            2 * self.hidden * self.hidden
            + 2 * self.hidden * self.kv_heads * head
            + 3 * self.hidden * self.ffn
            + 2 * self.hidden
        )
        return 4 * (2 * self.vocab * self.hidden + self.layers * per_layer + self.hidden)


class _Writer:
    """Appends random float32 tensors to the external data file; collects initializers."""

    def __init__(self, handle, location: str, seed: int):
        self.handle, self.location = handle, location
        self.rng = np.random.default_rng(seed)
        self.initializers: list[TensorProto] = []

    def random(self, name: str, shape: tuple[int, ...], scale: float, shift: float = 0.0) -> str:
        """A tensor of N(shift, scale²) values, written in blocks; returns its name."""
        self.handle.write(b"\0" * (-self.handle.tell() % ALIGN))
        offset, count = self.handle.tell(), int(np.prod(shape))
        for start in range(0, count, BLOCK_VALUES):
            block = self.rng.standard_normal(min(BLOCK_VALUES, count - start), dtype=np.float32)
            self.handle.write((block * np.float32(scale) + np.float32(shift)).tobytes())
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(count * 4))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        """A small constant kept inside the model file."""
        self.initializers.append(numpy_helper.from_array(value, name))
        return name


class _Builder:
    """Node list with unique names."""

    def __init__(self):
        self.nodes: list = []

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _rms_norm(b: _Builder, w: _Writer, x: str, prefix: str, hidden: int) -> str:
    """x / sqrt(mean(x²) + eps) * weight, decomposed as exporters write it."""
    square = b.op("Pow", [x, "two"], f"{prefix}.pow")
    mean = b.op("ReduceMean", [square], f"{prefix}.mean", axes=[-1], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [mean, "eps"], f"{prefix}.add")], f"{prefix}.sqrt")
    normed = b.op("Div", [x, std], f"{prefix}.div")
    return b.op("Mul", [normed, w.random(f"{prefix}.weight", (hidden,), 0.1, 1.0)], f"{prefix}.mul")


def _heads(b: _Builder, x: str, shape: str, prefix: str) -> str:
    """[1, S, n*D] -> [1, n, S, D]."""
    return b.op("Transpose", [b.op("Reshape", [x, shape], f"{prefix}.split")], f"{prefix}.heads", perm=[0, 2, 1, 3])


def _attention(b: _Builder, w: _Writer, x: str, p: str, spec: LlamaSpec) -> str:
    """Grouped-query causal self-attention with its o projection."""
    h, d, kv = spec.hidden, spec.hidden // spec.heads, spec.kv_heads
    std = 1 / np.sqrt(h)
    q = b.op("MatMul", [x, w.random(f"{p}.q_proj.weight", (h, spec.heads * d), std)], f"{p}.q_proj")
    k = b.op("MatMul", [x, w.random(f"{p}.k_proj.weight", (h, kv * d), std)], f"{p}.k_proj")
    v = b.op("MatMul", [x, w.random(f"{p}.v_proj.weight", (h, kv * d), std)], f"{p}.v_proj")
    q = _heads(b, q, "q_shape", f"{p}.q")
    k, v = _heads(b, k, "kv_shape", f"{p}.k"), _heads(b, v, "kv_shape", f"{p}.v")
    repeated = []
    for name, t in (("k", k), ("v", v)):
        t = b.op("Unsqueeze", [t, "axis2"], f"{p}.{name}.unsqueeze")
        t = b.op("Expand", [t, "gqa_expand"], f"{p}.{name}.expand")
        repeated.append(b.op("Reshape", [t, "gqa_shape"], f"{p}.{name}.repeat"))
    k, v = repeated
    kt = b.op("Transpose", [k], f"{p}.k.t", perm=[0, 1, 3, 2])
    scores = b.op("Mul", [b.op("MatMul", [q, kt], f"{p}.qk"), "scale"], f"{p}.scaled")
    probs = b.op("Softmax", [b.op("Add", [scores, "causal"], f"{p}.masked")], f"{p}.softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], f"{p}.context")
    ctx = b.op("Transpose", [ctx], f"{p}.merge_t", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, "hidden_shape"], f"{p}.merge")
    return b.op("MatMul", [ctx, w.random(f"{p}.o_proj.weight", (spec.heads * d, h), std)], f"{p}.o_proj")


def _mlp(b: _Builder, w: _Writer, x: str, p: str, spec: LlamaSpec) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    h, f = spec.hidden, spec.ffn
    gate = b.op("MatMul", [x, w.random(f"{p}.gate_proj.weight", (h, f), 1 / np.sqrt(h))], f"{p}.gate_proj")
    silu = b.op("Mul", [gate, b.op("Sigmoid", [gate], f"{p}.sigmoid")], f"{p}.silu")
    up = b.op("MatMul", [x, w.random(f"{p}.up_proj.weight", (h, f), 1 / np.sqrt(h))], f"{p}.up_proj")
    inner = b.op("Mul", [silu, up], f"{p}.act")
    return b.op("MatMul", [inner, w.random(f"{p}.down_proj.weight", (f, h), 1 / np.sqrt(f))], f"{p}.down_proj")


def _constants(b: _Builder, w: _Writer, spec: LlamaSpec) -> None:
    """Shapes, scalars and the causal mask shared by the layers (Reshape's 0 copies a dim)."""
    d, s, rep = spec.hidden // spec.heads, spec.seq, spec.heads // spec.kv_heads
    for name, value in (
        ("two", np.array(2.0, np.float32)),
        ("eps", np.array(1e-5, np.float32)),
        ("scale", np.array(1 / np.sqrt(d), np.float32)),
        ("q_shape", np.array([1, 0, spec.heads, d], np.int64)),
        ("kv_shape", np.array([1, 0, spec.kv_heads, d], np.int64)),
        ("axis2", np.array([2], np.int64)),
        ("gqa_expand", np.array([1, 1, rep, 1, 1], np.int64)),
        ("gqa_shape", np.array([1, spec.heads, -1, d], np.int64)),
        ("hidden_shape", np.array([1, 0, spec.heads * d], np.int64)),
    ):
        w.const(name, value)
    mask = np.triu(np.full((s, s), -1e9, np.float32), 1)
    if not spec.dynamic:
        w.const("causal", mask)
        return
    w.const("full_causal", mask)
    w.const("index1", np.array([1], np.int64))
    w.const("zeros2", np.array([0, 0], np.int64))
    length = b.op("Gather", [b.op("Shape", ["input_ids"], "ids_shape"), "index1"], "seq_len", axis=0)
    ends = b.op("Concat", [length, length], "mask_ends", axis=0)
    b.op("Slice", ["full_causal", "zeros2", ends], "causal")


def write_llama(path: Path, spec: LlamaSpec, seed: int = 0) -> int:
    """Write the decoder to `path` with its weights in `path.name + '.data'`; returns the data
    file's size in bytes. Input `input_ids` [1, seq] int64, output `logits` [1, seq, vocab] (seq:
    the dynamic 'sequence' when `spec.dynamic`)."""
    path = Path(path)
    location = path.name + ".data"
    b = _Builder()
    with open(path.parent / location, "wb") as handle:
        w = _Writer(handle, location, seed)
        _constants(b, w, spec)
        embed = w.random("embed_tokens.weight", (spec.vocab, spec.hidden), 0.02)
        x = b.op("Gather", [embed, "input_ids"], "embed", axis=0)
        for i in range(spec.layers):
            p = f"layers.{i}"
            attn = _attention(b, w, _rms_norm(b, w, x, f"{p}.input_layernorm", spec.hidden), f"{p}.self_attn", spec)
            x = b.op("Add", [x, attn], f"{p}.attn_residual")
            mlp = _mlp(b, w, _rms_norm(b, w, x, f"{p}.post_attention_layernorm", spec.hidden), f"{p}.mlp", spec)
            x = b.op("Add", [x, mlp], f"{p}.mlp_residual")
        x = _rms_norm(b, w, x, "norm", spec.hidden)
        head = w.random("lm_head.weight", (spec.hidden, spec.vocab), 1 / np.sqrt(spec.hidden))
        b.op("MatMul", [x, head], "logits")
        size = handle.tell()
    seq = "sequence" if spec.dynamic else spec.seq
    graph = helper.make_graph(
        b.nodes,
        "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, spec.vocab])],
        w.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return size
