"""KV caches: the one kind of graph input/output whose head axis may be pruned.

A decoder exported with its cache (optimum, onnxruntime-genai, a torch wrapper around
`transformers.DynamicCache`) reads the keys/values of the earlier tokens as graph inputs
``past_key_values.{i}.key/value`` [batch, kv_heads, past_seq, head_dim] and returns them with the
current token's appended as graph outputs ``present.{i}.key/value``::

    x ─k_proj─▶ Reshape [N, T, H, D] ─Transpose─▶ [N, H, T, D] (─RoPE─▶)  ┐
                                       past [N, H, P, D] ──────────────────┴─Concat(axis 2)─▶ present
                                                                  present ─(repeat_kv)─▶ MatMul

Every other graph input/output keeps all its channels (analysis freezes what reaches them). A
cache is recognised by that structure, not by its name: a graph input of rank 4 concatenated on
the sequence axis (2) with the current keys/values right after the head split (a Transpose
[0, 2, 1, 3] of a Reshape, through the rotary embedding's elementwise ops), the result a graph
output that feeds the attention MatMul (through GQA's Unsqueeze/Expand/Reshape and a Transpose
or a scale). Its head axis (1) then joins the heads' group: pruning a head (a KV group under GQA)
drops its slice of the cache, so the pruned model's cache inputs and present outputs declare the
new head count (the runtime allocates the cache from them), and verification feeds the pruned
model the kept heads of the past and compares the kept heads of the present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from onnxprune.analysis.relations import Space
from onnxprune.model.nodes import attr, node_label
from onnxprune.model.view import ModelView

HEAD_AXIS = 1
SEQUENCE_AXIS = 2
#: between the graph input and the Concat (the empty-cache Concat of one input TorchScript leaves)
_PASS = ("Identity", "Cast")
#: between the head split and the Concat: the rotary embedding (x·cos + rotate_half(x)·sin)
_ROTARY = ("Mul", "Add", "Sub", "Neg", "Concat", "Slice", "Split", "Cast", "Identity")
#: between the present output and the attention MatMul: GQA's repeat_kv, kᵀ, a scale
_TO_MATMUL = ("Unsqueeze", "Expand", "Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Tile")
_DEPTH = 8
#: names that say "cache" (only a hint: the freeze reason of one not recognised says why)
CACHE_NAMES = re.compile(r"past|present|cache|key_values", re.I)


@dataclass(frozen=True)
class KvCache:
    """One layer's key or value cache: the graph input, the graph output and the Concat between."""

    past: str
    present: str
    concat: str

    def spaces(self) -> tuple[Space, Space]:
        """The head axes of the past input and the present output."""
        return Space(self.past, HEAD_AXIS), Space(self.present, HEAD_AXIS)


def find_kv_caches(view: ModelView) -> list[KvCache]:
    """Every KV cache of the model (see the module docstring), in graph-input order."""
    caches = []
    for info in view.graph.input:
        if info.name in view.graph_inputs:
            cache = _cache_of(view, info.name)
            if cache is not None:
                caches.append(cache)
    return caches


def kv_cache_spaces(view: ModelView) -> set[Space]:
    """The head axes of every KV cache's past input and present output."""
    return {space for cache in find_kv_caches(view) for space in cache.spaces()}


def _cache_of(view: ModelView, past: str) -> KvCache | None:
    if not _heads_axis(view, past):
        return None
    tensor = past
    while True:  # through Identity/Cast and single-input Concats to the Concat with the new keys
        users = view.consumers.get(tensor, [])
        concat = next((u for u in users if u.op_type == "Concat" and len(u.input) == 2), None)
        if concat is not None or len(users) == 0:
            break
        step = next((u for u in users if _passes(u)), None)
        if step is None:
            return None
        tensor = step.output[0]
    if concat is None or attr(concat, "axis", 0) % 4 != SEQUENCE_AXIS or list(concat.input).index(tensor) != 0:
        return None
    present = _graph_output_of(view, concat.output[0])
    if present is None or not _heads_axis(view, present):
        return None
    if not _after_head_split(view, concat.input[1]) or not _feeds_matmul(view, concat.output[0]):
        return None
    return KvCache(past, present, node_label(concat))


def _graph_output_of(view: ModelView, name: str) -> str | None:
    """`name` when it is a graph output, else the graph output an Identity/Cast of it is (an fp16
    cache cast back), else None."""
    if name in view.graph_outputs:
        return name
    copies = [u.output[0] for u in view.consumers.get(name, []) if u.op_type in _PASS]
    return next((c for c in copies if c in view.graph_outputs), None)


def _heads_axis(view: ModelView, name: str) -> bool:
    """Rank 4 with a static head axis of more than one head."""
    shape = view.shape(name)
    return shape is not None and len(shape) == 4 and isinstance(shape[HEAD_AXIS], int) and shape[HEAD_AXIS] > 1


def _passes(node: onnx.NodeProto) -> bool:
    return node.op_type in _PASS or (node.op_type == "Concat" and len([i for i in node.input if i]) == 1)


def _after_head_split(view: ModelView, name: str) -> bool:
    """True when `name` is the head split's Transpose [0, 2, 1, 3] of a Reshape, or computed from
    one by the rotary embedding's ops (up to a few nodes back)."""
    frontier, seen = [name], set()
    for _ in range(_DEPTH):
        following = []
        for tensor in frontier:
            node = view.producer.get(tensor)
            if node is None or tensor in seen:
                continue
            seen.add(tensor)
            if node.op_type == "Transpose" and list(attr(node, "perm", [])) == [0, 2, 1, 3]:
                source = view.producer.get(node.input[0])
                if source is not None and source.op_type == "Reshape":
                    return True
            if node.op_type in _ROTARY:
                following += [i for i in node.input if i and not view.is_const(i)]
        frontier = following
    return False


def _feeds_matmul(view: ModelView, name: str) -> bool:
    """True when `name` reaches a MatMul through layout ops and scales (up to a few nodes on)."""
    frontier, seen = [name], set()
    for _ in range(_DEPTH):
        following = []
        for tensor in frontier:
            for node in view.consumers.get(tensor, []):
                if node.op_type == "MatMul":
                    return True
                through = node.input[0] == tensor or node.op_type == "Mul"  # a scale on either side
                if node.op_type in _TO_MATMUL and through and node.output[0] not in seen:
                    seen.add(node.output[0])
                    following.append(node.output[0])
        frontier = following
    return False


def not_a_cache_hint(name: str) -> str:
    """What the freeze reason of a graph input/output named like a cache adds ('' otherwise)."""
    if not CACHE_NAMES.search(name):
        return ""
    return (
        " (named like a KV cache, but not recognised as one: a rank-4 graph input concatenated on axis 2 with the"
        " current keys/values after the head split, the result a graph output that feeds the attention MatMul)"
    )
