"""Put weight chains back into a pruned model, their stored tensors sliced.

`apply_plan` slices the folded (float) weights that analysis saw. For each weight chain of the
input (see `model/weight_chains.py`) this pass propagates the sink's kept indices back through
the chain's nodes to its stored tensors (int8 values, scales, zero points, fp16 values, a bias
before its Unsqueeze), slices those, and replaces the folded weight by the chain: the output
keeps the input's stored precision and the plan's `weights` names the stored tensors.

A chain is put back only when the slices are consistent (a tensor shared by several chains, or
also read directly, must be sliced the same way everywhere) and when the chain, evaluated on its
sliced tensors, yields exactly the sliced folded weight; otherwise the folded weight stays (the
model is still right, only larger) and the reason is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.tensors import tensor_value
from onnxprune.model.weight_chains import (
    ChainSet,
    ChainUnsupported,
    WeightChain,
    evaluate_chain_outputs,
    input_kept,
    ordered_nodes,
)

Kept = dict[int, np.ndarray]


@dataclass
class ChainRestore:
    """What the pass did: chains put back, and why the others were not."""

    restored: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sink -> reason


def restore_chains(pruned: onnx.ModelProto, record: dict[str, dict], chains: ChainSet) -> ChainRestore:
    """Replace folded chain sinks of `pruned` (modified in place) by their chains with sliced
    stored tensors; `record` (the plan's weights) then names the stored tensors instead."""
    result = ChainRestore()
    inits = {init.name: init for init in pruned.graph.initializer}
    candidates = {sink: chain for sink, chain in chains.chains.items() if sink in inits}
    private: set[str] = set()
    while candidates:
        kept, problems, clashes = _consistent_slices(candidates, record, chains)
        if not problems and not clashes:
            clashes = _held_differently(candidates, _sliced_chains(candidates, kept, chains)[1], inits)
        fresh = [sink for sink in clashes if sink not in private]
        for sink in fresh:  # its own copies of the shared tensors, sliced its way
            shared = set(inits) | {
                n for other, c in candidates.items() if other != sink for n in c.tensors + c.sources + c.params
            }
            candidates[sink] = private_copy(candidates[sink], chains, shared)
            private.add(sink)
        problems.update({sink: reason for sink, reason in clashes.items() if sink not in fresh})
        if not problems and not fresh:
            problems = _name_clashes(candidates, inits, pruned) or _evaluation_mismatches(
                candidates, kept, inits, chains
            )
            if not problems:
                break
        result.skipped.update(problems)
        candidates = {s: c for s, c in candidates.items() if s not in problems}
    if candidates:
        _rewrite(pruned, candidates, kept, record, chains)
        result.restored = sorted(candidates)
    return result


def private_copy(chain: WeightChain, chains: ChainSet, shared: set[str]) -> WeightChain:
    """The chain with its `shared` tensors, and the node outputs computed from them, renamed
    `<name>__<sink>` (stored tensors copied under those names; `chains.copied_from` says of
    which): a stored tensor that two chains slice differently is then held once per slicing."""
    rename = {
        name: f"{name}__{chain.sink}"
        for name in chain.sources + chain.params + chain.tensors
        if name in shared and name != chain.sink
    }
    nodes = []
    for node in chain.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if any(n in rename for n in node.input) and node.output[0] != chain.sink:
            rename.setdefault(node.output[0], f"{node.output[0]}__{chain.sink}")
        copy.input[:] = [rename.get(n, n) for n in node.input]
        copy.output[:] = [rename.get(n, n) for n in node.output]
        nodes.append(copy)
    for old, new in rename.items():
        if old in chains.shapes:
            chains.shapes[new] = chains.shapes[old]
        if old in chains.stored and new not in chains.stored:
            chains.stored[new] = onnx.TensorProto()
            chains.stored[new].CopyFrom(chains.stored[old])
            chains.stored[new].name = new
            chains.copied_from[new] = chains.copied_from.get(old, old)
    return WeightChain(
        chain.sink, nodes, [rename.get(n, n) for n in chain.sources], [rename.get(n, n) for n in chain.params]
    )


def _sink_kept(sink: str, record: dict) -> Kept:
    entry = record.get(sink)
    return {int(a): np.asarray(i, dtype=np.int64) for a, i in entry["kept"].items()} if entry else {}


def _chain_kept(chain: WeightChain, sink_kept: Kept, chains: ChainSet) -> dict[str, Kept]:
    """Kept indices of every tensor of one chain (ChainUnsupported when they disagree)."""
    kept = {chain.sink: sink_kept}
    for node in reversed(chain.nodes):
        try:
            inputs = input_kept(node, kept.get(node.output[0], {}), chains.shapes, chains.stored)
        except KeyError as exc:
            raise ChainUnsupported(f"the shape of '{exc.args[0]}' is unknown") from None
        for name, axes in inputs.items():
            if name in kept and not _same_kept(kept[name], axes):
                raise ChainUnsupported(f"'{name}' would be sliced two ways within the chain")
            kept[name] = axes
    for name in chain.params:
        kept.setdefault(name, {})
    return kept


def _consistent_slices(candidates: dict, record: dict, chains: ChainSet):
    """Kept indices per tensor over all candidate chains, the chains that cannot be sliced
    (problems) and those that slice a tensor differently from an earlier chain (clashes)."""
    merged: dict[str, Kept] = {}
    problems, clashes = {}, {}
    for sink, chain in candidates.items():
        try:
            kept = _chain_kept(chain, _sink_kept(sink, record), chains)
        except ChainUnsupported as exc:
            problems[sink] = str(exc)
            continue
        clash = next((n for n, k in kept.items() if n in merged and not _same_kept(merged[n], k)), None)
        if clash:
            clashes[sink] = f"'{clash}' is sliced differently elsewhere"
            continue
        for name, axes in kept.items():
            merged.setdefault(name, axes)
    return merged, problems, clashes


def _same_kept(a: Kept, b: Kept) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _name_clashes(candidates: dict, inits: dict, pruned: onnx.ModelProto) -> dict[str, str]:
    """Chains whose inner tensors the pruned model still holds (as an initializer left folded, or
    a node output): putting them back would define a name twice."""
    written = {out for node in pruned.graph.node for out in node.output}
    problems = {}
    for sink, chain in candidates.items():
        inner = [t for t in chain.tensors if t != sink and (t in written or (t in inits and t not in candidates))]
        if inner:
            problems[sink] = f"the pruned model already defines '{inner[0]}'"
    return problems


def _evaluation_mismatches(candidates: dict, kept: dict, inits: dict, chains: ChainSet) -> dict[str, str]:
    """Evaluate the candidate chains on their sliced tensors; any whose result differs from the
    pruned model's folded sink is a problem."""
    nodes, stored = _sliced_chains(candidates, kept, chains)
    try:
        values = _evaluate(nodes, stored, list(candidates), chains.opset)
    except Exception as exc:  # the reference evaluator refuses some ops/types: keep the folded weights
        reason = f"the chain could not be evaluated ({str(exc).splitlines()[0][:120]})"
        return {sink: reason for sink in candidates}
    problems = {}
    for sink in candidates:
        expected = tensor_value(inits[sink])
        got = values[sink]
        if (
            got.shape != expected.shape
            or got.dtype != expected.dtype
            or not np.allclose(got, expected, rtol=1e-6, atol=0, equal_nan=True)
        ):
            problems[sink] = "the sliced chain does not compute the sliced weight"
    return problems


def _held_differently(candidates: dict, stored: dict, inits: dict) -> dict[str, str]:
    """Chains reading a stored tensor that the pruned model also holds (another node reads it)
    with a different value (sliced otherwise, or rewritten by an op rule)."""
    problems = {}
    for sink, chain in candidates.items():
        for name in chain.sources + chain.params:
            if (
                name in inits
                and name not in candidates
                and not np.array_equal(tensor_value(inits[name]), tensor_value(stored[name]))
            ):
                problems[sink] = f"'{name}' is also read outside the chain with other values"
                break
    return problems


def _sliced_chains(candidates: dict, kept: dict, chains: ChainSet):
    """The chains' nodes (each once, input order) with rewritten Reshape shapes, and their stored
    tensors sliced, by name."""
    stored: dict[str, onnx.TensorProto] = {}
    nodes: dict[str, onnx.NodeProto] = {}
    for chain in candidates.values():
        for name in chain.sources + chain.params:
            if name not in stored:
                stored[name] = _slice_stored(chains.stored[name], kept.get(name, {}))
        for node in chain.nodes:
            if node.output[0] not in nodes:
                nodes[node.output[0]] = _sliced_node(node, kept, chains, stored)
    return list(nodes.values()), stored


def _slice_stored(tensor: onnx.TensorProto, axes: Kept) -> onnx.TensorProto:
    if not axes:
        return tensor
    value = tensor_value(tensor)
    index = np.ix_(*[axes.get(a, np.arange(n)) for a, n in enumerate(value.shape)])
    return numpy_helper.from_array(np.ascontiguousarray(value[index]), tensor.name)


def _sliced_node(node: onnx.NodeProto, kept: dict, chains: ChainSet, stored: dict) -> onnx.NodeProto:
    """A copy of a chain node; a Reshape whose output loses channels gets a new shape tensor."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    out_kept = kept.get(node.output[0], {})
    if node.op_type == "Reshape" and out_kept:
        shape = list(chains.shapes[node.output[0]])
        for axis, idx in out_kept.items():
            shape[axis] = len(idx)
        name = _fresh(f"{node.input[1]}__pruned", set(stored) | set(chains.input_tensors))
        stored[name] = numpy_helper.from_array(np.array(shape, dtype=np.int64), name)
        copy.input[1] = name
    return copy


def _fresh(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _evaluate(nodes: list, stored: dict, outputs: list[str], opset: int) -> dict[str, np.ndarray]:
    """Values of `outputs` computed by the chain nodes from the stored tensors."""
    writers = {node.output[0]: node for node in nodes}
    arrays = {name: tensor_value(tensor) for name, tensor in stored.items()}
    return evaluate_chain_outputs(writers, arrays, outputs, opset)


def _rewrite(pruned: onnx.ModelProto, chains_by_sink: dict, kept: dict, record: dict, chains: ChainSet) -> None:
    """Swap the folded sinks for the chains and their sliced tensors; update the record."""
    nodes, stored = _sliced_chains(chains_by_sink, kept, chains)
    graph = pruned.graph
    held = set()
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name in chains_by_sink:
            del graph.initializer[index]
        else:
            held.add(name)
    graph.initializer.extend(t for name, t in stored.items() if name not in held)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(ordered_nodes(nodes) + existing)
    for sink in chains_by_sink:
        record.pop(sink, None)
    for name, axes in kept.items():
        if name in chains.stored and (axes or name in chains.copied_from):
            record[name] = {
                "shape": list(chains.stored[name].dims),
                "kept": {str(a): idx.tolist() for a, idx in sorted(axes.items())},
            }
            if name in chains.copied_from:
                record[name]["slice_of"] = chains.copied_from[name]
