"""Weight chains: constant sub-graphs of layout and precision ops that turn stored tensors into
the weights that ops read (int8 → Cast → Mul by a per-channel scale → Conv weight; a QDQ
model's DequantizeLinear of int8 weights; fp16 → Cast; a bias [C] → Unsqueeze → [1, C, 1, 1]).

Normalization folds them into float tensors, which is what analysis, scoring and the masked
reference see (the folded value *is* the dequantized weight). They are recorded here, from the
input model before normalization, so that `passes/slice_chains.py` can put each chain back into
the pruned model with its stored tensors sliced instead of the folded float weight: the output
keeps the input's precision, and the plan names only tensors of the input.

`ChainSet` also knows every tensor of the input (initializers and `Constant` outputs) and, for
each tensor normalization can fold, the input tensors it was folded from (the plan's `derived`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.model.nodes import attr, node_label, topological_order
from onnxprune.model.normalize import normalize
from onnxprune.model.runtime import SUB_BYTE_TYPES, make_session, ort_feed
from onnxprune.model.tensors import initializers

#: ops a chain may hold: they move, cast, scale or dequantize values, never mix channels
CHAIN_OPS = frozenset(
    {
        "Cast",
        "CastLike",
        "DequantizeLinear",
        "Mul",
        "Div",
        "Add",
        "Sub",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "Identity",
    }
)
#: inputs that configure a chain op (shapes, axes, a type) rather than carry its values
PARAM_INPUTS = {"Reshape": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "CastLike": (1,)}
#: data types a chain's sink may have: a weight that ops compute with
FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


class ChainUnsupported(Exception):
    """A chain whose stored tensors cannot be sliced for the kept channels (the reason is the text)."""


@dataclass
class WeightChain:
    """One chain: its nodes (input order), the stored tensors it reads, the weight it yields."""

    sink: str
    nodes: list[onnx.NodeProto]
    sources: list[str]  # value inputs: sliced with the sink's channels
    params: list[str]  # shape/axes/type inputs: kept as they are (a Reshape's shape is rewritten)

    @property
    def tensors(self) -> list[str]:
        """Every tensor the chain's nodes write (the sink included)."""
        return [out for node in self.nodes for out in node.output if out]


@dataclass
class ChainSet:
    """The input model's weight chains, its stored tensors and where its foldable tensors come from."""

    chains: dict[str, WeightChain] = field(default_factory=dict)  # by sink
    stored: dict[str, onnx.TensorProto] = field(default_factory=dict)  # chain sources/params (copies)
    shapes: dict[str, tuple] = field(default_factory=dict)  # every chain tensor's shape
    input_tensors: set[str] = field(default_factory=set)
    provenance: dict[str, dict] = field(default_factory=dict)  # folded tensor -> {"from", "nodes"}
    opset: int = 13  # of the default domain, for evaluating the chains
    copied_from: dict[str, str] = field(default_factory=dict)  # a chain's private copy -> stored tensor

    def matched(self, normalized: onnx.ModelProto) -> ChainSet:
        """Keep the chains whose sink the normalized model holds as a float initializer of the
        chain's shape and whose other tensors it no longer has (they were folded away)."""
        inits = {init.name: init for init in normalized.graph.initializer}
        written = {out for node in normalized.graph.node for out in node.output}
        keep = {}
        for sink, chain in self.chains.items():
            init = inits.get(sink)
            inner = set(chain.tensors) - {sink}
            if init is None or init.data_type not in FLOAT_TYPES or tuple(init.dims) != self.shapes.get(sink):
                continue
            if inner & (set(inits) | written):
                continue
            keep[sink] = chain
        used = {name for chain in keep.values() for name in chain.sources + chain.params}
        return ChainSet(
            keep,
            {n: t for n, t in self.stored.items() if n in used},
            self.shapes,
            self.input_tensors,
            self.provenance,
            self.opset,
            dict(self.copied_from),
        )

    def split_derived(self, weights: dict) -> tuple[dict, dict]:
        """The plan's `weights` (tensors of the input model) and `derived` (tensors the output
        holds sliced under a name the input lacks: a folded tensor, with the input tensors and
        nodes it was folded from; or a weight chain's own copy of a stored tensor that two chains
        slice differently, `slice_of` naming it: the output holds `input[slice_of][np.ix_(kept...)]`)."""
        stored, derived = {}, {}
        for name, entry in weights.items():
            if name in self.input_tensors:
                stored[name] = entry
                continue
            origin = self.provenance.get(name) or {
                "from": [entry["slice_of"]] if "slice_of" in entry else [],
                "nodes": [],
            }
            derived[name] = {**entry, "from": origin["from"], "nodes": origin["nodes"][:32]}
        return stored, derived


def normalize_keeping_chains(model: onnx.ModelProto, in_place: bool = False) -> tuple[onnx.ModelProto, ChainSet]:
    """`graph.normalize`, and the input's weight chains recorded before it folds them (with
    `in_place` the input is gone afterwards). Match them to the result with `ChainSet.matched`."""
    chains = find_weight_chains(model)
    normalized = normalize(model, in_place=in_place)
    fold_remaining_chains(normalized, chains.opset)
    return normalized, chains


def fold_remaining_chains(model: onnx.ModelProto, opset: int) -> list[str]:
    """Fold the weight chains that normalization left (graph-surgeon keeps DequantizeLinear):
    each sink becomes an initializer of its computed value, the chain nodes and the stored
    tensors only they read are removed (`model` is modified). Returns the sinks folded."""
    graph = model.graph
    inits = initializers(model)
    writers = {}
    for node in graph.node:
        known = [n for n in node.input if n]
        if (
            node.op_type in CHAIN_OPS
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and known
            and all(n in inits or n in writers for n in known)
        ):
            writers[node.output[0]] = node
    outputs = {o.name for o in graph.output}
    chain_ids = {id(node) for node in writers.values()}
    sinks = list(
        dict.fromkeys(
            n
            for node in graph.node
            if id(node) not in chain_ids
            for n in node.input
            if n in writers and n not in outputs
        )
    )
    if not sinks:
        return []
    try:
        values = evaluate_chain_outputs(writers, inits, sinks, opset)
    except KeyError:
        return []

    read = [n for node in writers.values() for n in node.input if n in inits]
    needed = _ancestors([writers[n] for n in outputs if n in writers], writers)  # chains that end in an output stay
    kept_nodes = [node for node in graph.node if id(node) not in chain_ids or id(node) in needed]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    still_read = {n for node in graph.node for n in node.input} | outputs
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in read and graph.initializer[index].name not in still_read:
            del graph.initializer[index]
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(values[n]), n) for n in sinks)
    return sinks


def _ancestors(nodes: list[onnx.NodeProto], writers: dict[str, onnx.NodeProto]) -> set[int]:
    """Ids of `nodes` and of the chain nodes they read from."""
    seen, todo = set(), list(nodes)
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            todo.extend(writers[n] for n in node.input if n in writers)
    return seen


def find_weight_chains(model: onnx.ModelProto) -> ChainSet:
    """The weight chains of a model's main graph as loaded (before normalization)."""
    graph = model.graph
    stored = {init.name: init for init in graph.initializer}
    stored.update(_constant_tensors(graph))
    constant = set(stored)
    chain_nodes: dict[str, onnx.NodeProto] = {}
    provenance: dict[str, dict] = {}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or not inputs or not all(name in constant for name in inputs):
            continue
        constant.update(out for out in node.output if out)
        _trace(node, inputs, stored, provenance)
        if _is_chain_node(node, stored, chain_nodes):
            chain_nodes.update({out: node for out in node.output if out})
    sinks = _sinks(graph, chain_nodes)
    chains = {}
    for sink in sinks:
        chain = _collect(sink, chain_nodes, stored)
        if chain is not None:
            chains[sink] = chain
    used = {name for chain in chains.values() for name in chain.sources + chain.params}
    copies = {}
    for name in used:
        copies[name] = onnx.TensorProto()
        copies[name].CopyFrom(stored[name])
        copies[name].name = name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    result = ChainSet(chains, copies, {}, set(stored), provenance, opset)
    result.shapes = chain_shapes(result) if chains else {}
    return result


def _constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The tensors of `Constant` nodes that hold a tensor value, by output name."""
    found = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0]:
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                found[node.output[0]] = value
    return found


def _trace(node: onnx.NodeProto, inputs: list[str], stored: dict, provenance: dict) -> None:
    """Record which stored tensors and nodes a constant node's outputs are folded from."""
    sources, nodes = set(), [node_label(node)]
    for name in inputs:
        if name in stored:
            sources.add(name)
        elif name in provenance:
            sources.update(provenance[name]["from"])
            nodes = provenance[name]["nodes"] + [n for n in nodes if n not in provenance[name]["nodes"]]
    for out in node.output:
        if out:
            provenance[out] = {"from": sorted(sources), "nodes": nodes}


def _is_chain_node(node: onnx.NodeProto, stored: dict, chain_nodes: dict) -> bool:
    """A chain op whose every value input is stored or written by a chain node."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in CHAIN_OPS or len(node.output) != 1:
        return False
    params = PARAM_INPUTS.get(node.op_type, ())
    for index, name in enumerate(node.input):
        if not name:
            continue
        if index in params and name not in stored:
            return False
        if name not in stored and name not in chain_nodes:
            return False
    return True


def _sinks(graph: onnx.GraphProto, chain_nodes: dict) -> list[str]:
    """Chain outputs that a node outside the chains reads (graph outputs excluded)."""
    outputs = {o.name for o in graph.output}
    chain_ids = {id(node) for node in chain_nodes.values()}
    found = []
    for node in graph.node:
        if id(node) in chain_ids:
            continue
        for name in node.input:
            if name in chain_nodes and name not in outputs and name not in found:
                found.append(name)
    return found


def _collect(sink: str, chain_nodes: dict, stored: dict) -> WeightChain | None:
    """The nodes, sources and params of the chain ending in `sink` (None when it reads a
    stored tensor both as a value and as a param)."""
    order, sources, params, todo, seen = [], [], [], [sink], set()
    while todo:
        name = todo.pop()
        node = chain_nodes[name]
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        for index, inp in enumerate(node.input):
            if not inp:
                continue
            if inp in chain_nodes:
                todo.append(inp)
            elif index in PARAM_INPUTS.get(node.op_type, ()):
                params.append(inp)
            else:
                sources.append(inp)
    if set(sources) & set(params):
        return None
    position = {id(n): i for i, n in enumerate(chain_nodes.values())}
    order.sort(key=lambda n: position[id(n)])
    return WeightChain(sink, order, sorted(set(sources)), sorted(set(params)))


def chain_shapes(chains: ChainSet) -> dict[str, tuple]:
    """Shapes of every chain tensor, by shape inference on the chains alone (sources as typed
    inputs, so no value is copied or computed)."""
    nodes, seen = [], set()
    for chain in chains.chains.values():
        for node in chain.nodes:
            if node.output[0] not in seen:
                seen.add(node.output[0])
                nodes.append(node)
    params = {n for c in chains.chains.values() for n in c.params}
    inputs = [
        helper.make_tensor_value_info(n, t.data_type, list(t.dims)) for n, t in chains.stored.items() if n not in params
    ]
    outputs = [helper.make_tensor_value_info(sink, 0, None) for sink in chains.chains]
    graph = helper.make_graph(ordered_nodes(nodes), "chains", inputs, outputs, [chains.stored[n] for n in params])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", chains.opset)])
    model.ir_version = onnx.IR_VERSION
    shapes = {n: tuple(t.dims) for n, t in chains.stored.items()}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a chain ONNX cannot infer: no chain is matched (the folded weights stay)
        return shapes
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


def ordered_nodes(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes sorted so that each comes after the nodes writing its inputs."""
    written = {name for node in nodes for name in node.output}
    return topological_order(nodes, {name for node in nodes for name in node.input} - written)


# ---- kept indices, propagated from a chain's sink back to its stored tensors ----------------


def input_kept(
    node: onnx.NodeProto, out_kept: dict[int, np.ndarray], shapes: dict, stored: dict
) -> dict[str, dict[int, np.ndarray]]:
    """Kept indices per axis of each value input of `node`, given those of its output.
    Raises ChainUnsupported when the op moves a kept axis in a way that cannot be sliced."""
    op, out = node.op_type, node.output[0]
    if op in ("Cast", "CastLike", "Identity"):
        return {node.input[0]: dict(out_kept)}
    if op in ("Mul", "Div", "Add", "Sub"):
        return {name: _broadcast_kept(out_kept, len(shapes[out]), shapes[name]) for name in node.input if name}
    if op == "DequantizeLinear":
        return _dequantize_kept(node, out_kept, shapes)
    if op == "Transpose":
        perm = attr(node, "perm") or list(reversed(range(len(shapes[out]))))
        return {node.input[0]: {int(perm[a]): idx for a, idx in out_kept.items()}}
    if op in ("Unsqueeze", "Squeeze", "Reshape"):
        return {node.input[0]: _reshape_kept(out_kept, shapes[node.input[0]], shapes[out])}
    raise ChainUnsupported(f"{op} in a weight chain")


def _broadcast_kept(out_kept: dict, out_rank: int, shape: tuple) -> dict:
    """An input's axes under numpy broadcasting: size-1 (broadcast) axes are not sliced."""
    kept = {}
    for axis, idx in out_kept.items():
        in_axis = axis - (out_rank - len(shape))
        if in_axis >= 0 and shape[in_axis] != 1:
            kept[in_axis] = idx
    return kept


def _dequantize_kept(node: onnx.NodeProto, out_kept: dict, shapes: dict) -> dict:
    """x follows the output; a per-axis scale (and zero point) follows x on its axis."""
    x = node.input[0]
    rank = len(shapes[x])
    result = {x: dict(out_kept)}
    params = [name for name in node.input[1:3] if name]
    scale_shape = shapes[node.input[1]]
    if len(scale_shape) == 0 or int(np.prod(scale_shape)) == 1:
        return result  # per-tensor
    if attr(node, "block_size", 0) and len(scale_shape) == rank:
        return {**result, **{name: _blocked_kept(node, out_kept, shapes[x]) for name in params}}
    if attr(node, "block_size", 0) or len(scale_shape) != 1:
        if out_kept:
            raise ChainUnsupported("blocked DequantizeLinear in a weight chain")
        return result
    axis = attr(node, "axis", 1) % rank
    for name in params:
        result[name] = {0: out_kept[axis]} if axis in out_kept else {}
    return result


def _blocked_kept(node: onnx.NodeProto, out_kept: dict, shape: tuple) -> dict:
    """A blocked DequantizeLinear's scale (and zero point): one index per block of `block_size`
    values along `axis`, the other axes as x. Kept values on `axis` must be whole blocks."""
    axis, block = attr(node, "axis", 1) % len(shape), attr(node, "block_size", 0)
    kept = {a: idx for a, idx in out_kept.items() if a != axis}
    if axis in out_kept:
        blocks = np.unique(out_kept[axis] // block)
        whole = np.concatenate([np.arange(b * block, min((b + 1) * block, shape[axis])) for b in blocks])
        if not np.array_equal(whole, out_kept[axis]):
            raise ChainUnsupported(f"the kept channels are not whole blocks of {block} of a blocked DequantizeLinear")
        kept[axis] = blocks
    return kept


def _reshape_kept(out_kept: dict, in_shape: tuple, out_shape: tuple) -> dict:
    """A Reshape/Unsqueeze/Squeeze that only inserts or removes axes of size 1: each output axis
    of size > 1 is one input axis."""
    in_axes = [a for a, n in enumerate(in_shape) if n != 1]
    out_axes = [a for a, n in enumerate(out_shape) if n != 1]
    if [in_shape[a] for a in in_axes] != [out_shape[a] for a in out_axes]:
        if out_kept:
            raise ChainUnsupported("a Reshape that merges or splits a channel axis in a weight chain")
        return {}
    to_input = dict(zip(out_axes, in_axes))
    kept = {}
    for axis, idx in out_kept.items():
        if axis not in to_input:
            raise ChainUnsupported("a pruned axis of size 1 in a weight chain")
        kept[to_input[axis]] = idx
    return kept


def evaluate_chain_outputs(writers: dict[str, onnx.NodeProto], inits, names: list[str], opset: int) -> dict:
    """Values of chain tensors `names`, computed from the initializers `inits` (name -> array)
    by the chain nodes that write them (`writers`: output -> node), with ONNX Runtime (as
    normalization folded them). KeyError when a chain cannot be evaluated."""

    nodes, todo, needed = [], list(names), set()
    while todo:
        name = todo.pop()
        if name in writers and id(writers[name]) not in needed:
            needed.add(id(writers[name]))
            nodes.append(writers[name])
            todo.extend(n for n in writers[name].input if n)
    leaves = sorted({n for node in nodes for n in node.input if n and n not in writers})
    embedded = [n for n in leaves if helper.np_dtype_to_tensor_dtype(np.asarray(inits[n]).dtype) in SUB_BYTE_TYPES]
    leaves = [n for n in leaves if n not in embedded]  # int4 and the like: ONNX Runtime reads them serialized
    graph = helper.make_graph(
        ordered_nodes(nodes),
        "chains",
        [
            helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(np.asarray(inits[n]).dtype), list(np.shape(inits[n]))
            )
            for n in leaves
        ],
        [],
        [numpy_helper.from_array(np.asarray(inits[n]), n) for n in embedded],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))  # what ONNX Runtime reads
    try:
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
        model.graph.output.extend(helper.make_tensor_value_info(n, types[n], None) for n in names)
        session = make_session(model, in_memory=False)
        values = session.run(names, {n: ort_feed(np.asarray(inits[n])) for n in leaves})
    except Exception as exc:  # an op or type ONNX Runtime refuses
        raise KeyError(f"cannot evaluate {names[0]}: {str(exc).splitlines()[0][:120]}") from None
    return dict(zip(names, values))
