"""Graph-edit helpers: copies without weights, extra outputs (or only some), large weights set aside and put back."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.subgraphs import subgraph_outer_reads
from onnxprune.model.tensors import is_mapped, tensor_nbytes, tensor_value


def copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without the main graph's initializers (cheap even for big models)."""
    shell = onnx.ModelProto()
    copy_fields(model, shell, skip="graph")
    copy_fields(model.graph, shell.graph, skip="initializer")
    return shell


def with_mapped_inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its memory-mapped weights (tensors.is_mapped) read into it, for what must
    serialize it whole (ONNX Runtime refuses the absolute paths they point at); the model itself
    when it has none."""
    if not any(is_mapped(init) for init in model.graph.initializer):
        return model
    copy = copy_without_initializers(model)
    for init in model.graph.initializer:
        entry = copy.graph.initializer.add()
        entry.CopyFrom(numpy_helper.from_array(np.array(tensor_value(init)), init.name) if is_mapped(init) else init)
    return copy


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns the tensors `names` (float32) as graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in dict.fromkeys(names)
        if n not in present
    )
    return copy


def only_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model whose outputs are the tensors `names` (float32) alone, without the nodes
    and initializers they do not depend on (ONNX Runtime runs every node of a graph whatever the
    outputs asked for: the cut makes a pass up to an early tensor cost only that far). The graph
    inputs are all kept (but initializers listed as inputs), so the same feeds work."""
    needed, kept = set(names), []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in [*node.input, *subgraph_outer_reads(node)] if name)
    copy = copy_without_initializers(model)
    copy.graph.ClearField("node")
    copy.graph.node.extend(reversed(kept))
    copy.graph.initializer.extend(init for init in model.graph.initializer if init.name in needed)
    dropped = {init.name for init in model.graph.initializer} - needed  # IR < 4 lists them as inputs too
    inputs = [i for i in model.graph.input if i.name not in dropped]
    copy.graph.ClearField("input")
    copy.graph.input.extend(inputs)
    copy.graph.ClearField("output")
    copy.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in dict.fromkeys(names)
    )
    return copy


def copy_fields(source, target, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        repeated = getattr(descriptor, "is_repeated", None)
        if repeated is None:  # protobuf < 5
            repeated = descriptor.label == descriptor.LABEL_REPEATED
        if repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


#: Weights above this size are set aside during normalization when no foldable node reads them.
DETACH_BYTES = 1 << 20
DETACHED_LOCATION = "onnxprune-detached"


def detach_large_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of the model in which large initializers are empty stand-ins (data location
    external), unless a node whose inputs are all constant reads them (folding needs the values);
    returns it and the set-aside originals by name (not copied)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    folded_inputs = {
        name
        for node in graph.node
        if node.input and all(i in constants or not i for i in node.input)
        for name in node.input
    }
    light, detached = copy_without_initializers(model), {}
    for init in graph.initializer:
        entry = light.graph.initializer.add()
        if init.name in folded_inputs and is_mapped(init):  # folding reads it: its values, not its file
            entry.CopyFrom(numpy_helper.from_array(np.array(tensor_value(init)), init.name))
            continue
        if (
            init.name in folded_inputs
            or tensor_nbytes(init) <= DETACH_BYTES
            or init.data_location == onnx.TensorProto.EXTERNAL
        ):
            entry.CopyFrom(init)
            continue
        entry.name, entry.data_type, entry.data_location = init.name, init.data_type, onnx.TensorProto.EXTERNAL
        entry.dims.extend(init.dims)
        location = entry.external_data.add()
        location.key, location.value = "location", DETACHED_LOCATION
        detached[init.name] = init
    return light, detached


def reattach(model: onnx.ModelProto, detached: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Put the set-aside weights back in place of their stand-ins."""
    for init in model.graph.initializer:
        if init.name in detached and init.data_location == onnx.TensorProto.EXTERNAL:
            init.CopyFrom(detached[init.name])
    return model


def transplant(normalized: onnx.ModelProto, target: onnx.ModelProto, detached: dict) -> None:
    """Make `target` (which holds the set-aside weights) equal to `normalized`, whose stand-ins
    name them: everything but those weights is replaced; they stay where they are."""
    kept = {
        i.name
        for i in normalized.graph.initializer
        if i.name in detached and i.data_location == onnx.TensorProto.EXTERNAL
    }
    graph = target.graph
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in kept:
            del graph.initializer[index]
    small = [i for i in normalized.graph.initializer if i.name not in kept]
    normalized.graph.ClearField("initializer")
    normalized.graph.initializer.extend(small)
    for descriptor, _ in graph.ListFields():
        if descriptor.name != "initializer":
            graph.ClearField(descriptor.name)
    for descriptor, _ in target.ListFields():
        if descriptor.name != "graph":
            target.ClearField(descriptor.name)
    copy_fields(normalized.graph, graph, skip="")
    copy_fields(normalized, target, skip="graph")


def large_weights_as_inputs(model: onnx.ModelProto, limit: int = 1 << 20) -> onnx.ModelProto:
    """A copy in which initializers over `limit` bytes, and those whose data are elsewhere (the
    stand-ins of set-aside weights), are graph inputs of the same type and shape (no data): what
    the full ONNX checker and ONNX Runtime's session check need, at any model size."""
    light = copy_without_initializers(model)
    declared = {i.name for i in light.graph.input}
    for init in model.graph.initializer:
        if tensor_nbytes(init) <= limit and init.data_location != onnx.TensorProto.EXTERNAL:
            light.graph.initializer.add().CopyFrom(init)
        elif init.name not in declared:
            light.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light
