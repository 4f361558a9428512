"""Mutations of small valid ONNX models for the fuzz suite.

A mutator takes a seed model (``onnx.ModelProto``) and a ``numpy`` random generator and returns
the bytes of a mutated model file. Byte-level mutators (truncation, bit flips) work on the
serialized model; structural ones edit a copy of the proto. ``MUTATORS`` maps each mutation kind
to its function; ``seed_models()`` gives the valid models the mutations start from.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from graphs import GraphBuilder, conv_chain
from onnx import TensorProto, helper, numpy_helper

Mutator = Callable[[onnx.ModelProto, np.random.Generator], bytes]


def seed_models() -> list[onnx.ModelProto]:
    """Small valid prunable models: a Conv chain, a BN chain, a residual Add, a Concat, a Gemm head."""

    def residual(g, t):
        u = g.op("Relu", g.conv(t, 6, 6))
        return g.op("Add", t, u)

    def concat(g, t):
        a, b = g.conv(t, 6, 4), g.conv(t, 6, 2)
        return g.conv(g.op("Concat", a, b, axis=1), 6, 6)

    def gemm_head() -> onnx.ModelProto:
        g = GraphBuilder(shape=("N", 4, 4, 4))
        t = g.op("Relu", g.conv("x", 4, 8))
        return g.model(g.gemm_head(g.op("Flatten", t, axis=1), 8 * 16))

    return [
        conv_chain(lambda g, t: g.op("Relu", t), c=8),
        conv_chain(lambda g, t: g.op("Relu", g.bn(t, 6)), seed=1),
        conv_chain(residual, seed=2),
        conv_chain(concat, seed=3),
        gemm_head(),
    ]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def truncated(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """The file cut short at a random byte."""
    data = model.SerializeToString()
    return data[: int(rng.integers(0, len(data)))]


def bit_flipped(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """1 to 8 random bits flipped anywhere in the file."""
    data = bytearray(model.SerializeToString())
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(len(data)))
        data[position] ^= 1 << int(rng.integers(8))
    return bytes(data)


def wrong_opset(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """The default-domain opset changed to one that is too old, from the future, or removed."""
    copy = _copy(model)
    choice = int(rng.integers(4))
    if choice == 3:
        del copy.opset_import[:]
    else:
        copy.opset_import[0].version = [1, 5, 99][choice]
    return copy.SerializeToString()


def dangling_input(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """A node reads a tensor that nothing produces (or an initializer is removed)."""
    copy = _copy(model)
    if rng.random() < 0.5 and copy.graph.initializer:
        del copy.graph.initializer[int(rng.integers(len(copy.graph.initializer)))]
    else:
        node = _pick(rng, list(copy.graph.node))
        node.input[int(rng.integers(len(node.input)))] = "nobody_makes_this"
    return copy.SerializeToString()


def duplicate_names(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """Two nodes write the same tensor, or two initializers share a name."""
    copy = _copy(model)
    graph = copy.graph
    if rng.random() < 0.5 and len(graph.initializer) >= 2:
        a, b = rng.choice(len(graph.initializer), 2, replace=False)
        graph.initializer[int(b)].name = graph.initializer[int(a)].name
    else:
        a, b = rng.choice(len(graph.node), 2, replace=False)
        graph.node[int(b)].output[0] = graph.node[int(a)].output[0]
    return copy.SerializeToString()


def cycle(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """An early node reads the output of a later node (a cycle through the graph)."""
    copy = _copy(model)
    nodes = copy.graph.node
    early = int(rng.integers(len(nodes) - 1))
    late = int(rng.integers(early + 1, len(nodes)))
    nodes[early].input[0] = nodes[late].output[0]
    if rng.random() < 0.5:  # also put it in topological-looking order, so only a real sort finds it
        moved = nodes[early]
        node = onnx.NodeProto()
        node.CopyFrom(moved)
        del nodes[early]
        nodes.append(node)
    return copy.SerializeToString()


def shape_mismatch(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """A weight whose shape disagrees with the layer (or a graph input with the wrong channels)."""
    copy = _copy(model)
    if rng.random() < 0.25:
        dims = copy.graph.input[0].type.tensor_type.shape.dim
        dims[1].dim_value = dims[1].dim_value + int(rng.integers(1, 4))
        return copy.SerializeToString()
    inits = [i for i in copy.graph.initializer if len(i.dims) >= 1]
    init = _pick(rng, inits)
    value = numpy_helper.to_array(init)
    axis = int(rng.integers(value.ndim))
    if rng.random() < 0.5 and value.shape[axis] > 1:
        value = np.take(value, range(value.shape[axis] - 1), axis=axis)
    else:
        value = np.concatenate([value, np.take(value, [0], axis=axis)], axis=axis)
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), init.name))
    return copy.SerializeToString()


def non_finite_weights(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """NaN, +Inf or -Inf written into a few elements of a float weight."""
    copy = _copy(model)
    init = _pick(rng, [i for i in copy.graph.initializer if i.data_type == TensorProto.FLOAT])
    value = numpy_helper.to_array(init).copy()
    flat = value.reshape(-1)
    count = int(rng.integers(1, min(4, flat.size) + 1))
    flat[rng.choice(flat.size, count, replace=False)] = _pick(rng, [np.nan, np.inf, -np.inf])
    init.CopyFrom(numpy_helper.from_array(value, init.name))
    return copy.SerializeToString()


def empty_graph(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """No nodes, no outputs, or nothing at all."""
    copy = _copy(model)
    choice = int(rng.integers(3))
    if choice == 0:
        del copy.graph.node[:]
    elif choice == 1:
        del copy.graph.output[:]
    else:
        return b""
    return copy.SerializeToString()


def custom_domain_op(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """A node of a custom domain that no runtime knows, in the middle of the network or at its end."""
    copy = _copy(model)
    nodes = copy.graph.node
    index = int(rng.integers(len(nodes)))
    node = nodes[index]
    node.domain, node.op_type = "com.example.fuzz", _pick(rng, ["MagicOp", "Relu", "Conv"])
    copy.opset_import.append(helper.make_opsetid("com.example.fuzz", 1))
    return copy.SerializeToString()


def outputs_only_consumers(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """Intermediate tensors made graph outputs, or the graph's only consumer of a tensor is the output."""
    copy = _copy(model)
    graph = copy.graph
    choice = int(rng.integers(3))
    if choice == 0:  # every node's output is also a graph output
        present = {o.name for o in graph.output}
        graph.output.extend(
            helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None)
            for n in graph.node
            if n.output[0] not in present
        )
    elif choice == 1:  # the graph output is the input itself; the whole network is dead
        del graph.output[:]
        graph.output.append(helper.make_value_info(graph.input[0].name, graph.input[0].type))
    else:  # the last node is dropped: its input tensor's only consumer is the graph output
        last = graph.node[len(graph.node) - 1]
        feed = last.input[0]
        del graph.node[len(graph.node) - 1]
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(feed, TensorProto.FLOAT, None))
    return copy.SerializeToString()


def bad_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """A Conv/Concat/Flatten attribute set to a value that does not fit (group, pads, axis, kernel)."""
    copy = _copy(model)
    nodes = [n for n in copy.graph.node if n.attribute]
    node = _pick(rng, nodes)
    attr = _pick(rng, list(node.attribute))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = _pick(rng, [0, -7, 3, 1 << 40])
    elif attr.type == onnx.AttributeProto.INTS:
        attr.ints[:] = [_pick(rng, [-2, 0, 5, 1 << 40]) for _ in range(max(1, len(attr.ints)))]
    else:
        del node.attribute[:]
    return copy.SerializeToString()


def wrong_type(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """The input or a weight declared with an element type the ops do not take."""
    copy = _copy(model)
    if rng.random() < 0.5:
        copy.graph.input[0].type.tensor_type.elem_type = _pick(
            rng, [TensorProto.INT64, TensorProto.STRING, TensorProto.BOOL, 0]
        )
    else:
        init = _pick(rng, list(copy.graph.initializer))
        value = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(value.astype(_pick(rng, [np.int32, np.float64, np.float16])), init.name))
    return copy.SerializeToString()


def external_data_escape(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """A weight stored as external data at a path outside the model's folder, or missing."""
    copy = _copy(model)
    init = _pick(rng, list(copy.graph.initializer))
    location = _pick(rng, ["../outside.bin", "/etc/passwd", "missing.bin", "sub/../../x.bin", "."])
    init.ClearField("raw_data")
    for field in ("float_data", "int64_data", "int32_data", "double_data"):
        init.ClearField(field)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    return copy.SerializeToString()


def huge_shapes(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """Declared dimensions no machine can allocate: the input's H and W, or a weight's dims."""
    copy = _copy(model)
    if rng.random() < 0.5:
        dims = copy.graph.input[0].type.tensor_type.shape.dim
        for d in dims[2:]:
            d.dim_value = int(_pick(rng, [1 << 20, 1 << 31, 1 << 62]))
    else:
        init = _pick(rng, list(copy.graph.initializer))
        init.dims[0] = int(_pick(rng, [1 << 31, 1 << 40]))
    return copy.SerializeToString()


def valid(model: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    """The seed itself (the control: must prune and verify)."""
    return model.SerializeToString()


MUTATORS: dict[str, Mutator] = {
    "valid": valid,
    "truncated": truncated,
    "bit_flipped": bit_flipped,
    "wrong_opset": wrong_opset,
    "dangling_input": dangling_input,
    "duplicate_names": duplicate_names,
    "cycle": cycle,
    "shape_mismatch": shape_mismatch,
    "non_finite_weights": non_finite_weights,
    "empty_graph": empty_graph,
    "custom_domain_op": custom_domain_op,
    "outputs_only_consumers": outputs_only_consumers,
    "bad_attribute": bad_attribute,
    "wrong_type": wrong_type,
    "external_data_escape": external_data_escape,
    "huge_shapes": huge_shapes,
}
