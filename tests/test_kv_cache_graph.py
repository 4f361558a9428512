"""KV-cache recognition on a hand-built attention layer (no transformers needed): the past keys
and values concatenated on the sequence axis after the head split, the result a graph output
feeding the attention MatMuls (analysis/rules/kv_cache.py). Its head axis prunes; the same graph
whose present is not returned keeps the past frozen, with a reason that says why."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import GraphBuilder
from onnx import TensorProto, helper

import onnxprune
from onnxprune.analysis.relations import Space

HEADS, DEPTH, TOKENS, PAST = 2, 4, 3, 2
WIDTH = HEADS * DEPTH


def attention_with_cache(return_present: bool = True) -> onnx.ModelProto:
    """x [1, T, C] -> q/k/v heads; k and v appended to the past caches; softmax(q·kᵀ)·v -> out proj."""
    g = GraphBuilder(shape=(1, TOKENS, WIDTH))
    g.inputs += [
        helper.make_tensor_value_info(f"past.{kind}", TensorProto.FLOAT, [1, HEADS, "past", DEPTH])
        for kind in ("key", "value")
    ]
    split = g.const(np.array([1, TOKENS, HEADS, DEPTH], dtype=np.int64))

    def heads(weight: str) -> str:
        return g.op("Transpose", g.op("Reshape", g.op("MatMul", "x", weight), split), perm=[0, 2, 1, 3])

    q = heads(g.weight(WIDTH, WIDTH))
    key = g.op("Concat", "past.key", heads(g.weight(WIDTH, WIDTH)), axis=2)
    value = g.op("Concat", "past.value", heads(g.weight(WIDTH, WIDTH)), axis=2)
    scores = g.op("Softmax", g.op("MatMul", q, g.op("Transpose", key, perm=[0, 1, 3, 2])), axis=-1)
    merged = g.op("Transpose", g.op("MatMul", scores, value), perm=[0, 2, 1, 3])
    merge = g.const(np.array([1, TOKENS, WIDTH], dtype=np.int64))
    out = g.op("MatMul", g.op("Reshape", merged, merge), g.weight(WIDTH, WIDTH))
    return g.model(out, *((key, value) if return_present else ()))  # the presents: names are only a hint


def test_cache_head_axis_is_pruned_with_the_heads():
    model = attention_with_cache()
    groups = onnxprune.analyze(model)
    heads = next(g for g in groups if Space("past.key", 1) in g.spaces)
    assert heads.prunable and heads.channels == HEADS
    presents = [o.name for o in model.graph.output[1:]]
    assert {Space(n, 1) for n in ("past.key", "past.value", *presents)} <= set(heads.spaces)
    result = onnxprune.prune(model, ratio=0.5, input_shapes={"past.key": (1, HEADS, PAST, DEPTH)})
    assert result.report["verification"]["ok"]
    assert result.plan["io_shapes"]["past.value"] == {"1": {"from": HEADS, "to": 1}}
    declared = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in result.model.graph.input}
    assert declared["past.key"] == declared["past.value"] == 1


def test_a_past_input_that_is_not_a_cache_stays_frozen():
    groups = onnxprune.analyze(attention_with_cache(return_present=False))
    heads = next(g for g in groups if Space("past.key", 1) in g.spaces)
    assert heads.frozen.startswith("reaches graph input 'past.key' (named like a KV cache, but not recognised")
