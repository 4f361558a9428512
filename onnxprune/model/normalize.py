"""Normalization as named passes: IR upgrade, symbolic dims, constant folding and cleanup with
subgraph-carrying nodes held out, shape inference; every result checked, the input never blamed."""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx

from onnxprune.errors import InternalError, short_message
from onnxprune.model.edit import (
    detach_large_weights,
    large_weights_as_inputs,
    reattach,
    transplant,
)
from onnxprune.model.io import check_dimensions
from onnxprune.model.runtime import make_session, onnxruntime
from onnxprune.model.shapes import infer_shapes
from onnxprune.model.subgraphs import HELD_DOMAIN, hold_subgraphs, restore_subgraphs


def normalize(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return a normalized copy: constants lifted and folded, dead nodes removed, shapes inferred.

    Large weights that no constant sub-graph reads are set aside meanwhile (graph-surgeon and
    shape inference copy the model several times) and put back once, at the end. `in_place`:
    turn `model` itself into the normalized model, so those weights are never copied."""
    light, detached = detach_large_weights(model)
    normalized = _normalize(light)
    check_normalized(model, normalized)
    if not in_place:
        return reattach(normalized, detached)
    transplant(normalized, model, detached)
    return model


def check_normalized(original: onnx.ModelProto, normalized: onnx.ModelProto) -> None:
    """InternalError when the normalized model fails the full ONNX checker or ONNX Runtime cannot
    load it, unless the original fails the same way (then it is no worse than the input, which
    passed the checks at load)."""
    problem = model_problem(normalized)
    if problem is None or model_problem(original) is not None:
        return
    raise InternalError(f"internal error: normalization produced an invalid model ({problem}); please report it")


def model_problem(model: onnx.ModelProto) -> str | None:
    """What the full ONNX checker or ONNX Runtime (creating a CPU session) says against a model,
    or None when both accept it. Weights over 1 MiB (and set-aside ones) are checked as typed
    graph inputs: cheap at any model size."""
    light = large_weights_as_inputs(model)
    try:
        onnx.checker.check_model(light, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, protobuf errors
        return f"ONNX checker: {short_message(exc)}"
    try:
        make_session(light, in_memory=False)
    except Exception as exc:
        return f"ONNX Runtime: {short_message(exc)}"
    return None


def _normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run every normalization pass in order (the graph-surgeon steps in one import/export)."""
    for _, run in normalization_passes(separate=False):
        model = run(model)
    return model


def normalization_passes(separate: bool = False) -> list[tuple[str, Callable]]:
    """The normalization passes in order, as (name, function ModelProto -> ModelProto). Each
    returns a valid model when given one (tests check the model after every pass). `separate`:
    lifting, folding, dead-node removal and sorting as four passes (each a graph-surgeon
    import/export) instead of one."""
    surgery = (
        [
            ("lift constants", ()),
            ("remove dead nodes", ("cleanup",)),
            ("fold constants", ("fold",)),
            ("sort topologically", ("toposort",)),
        ]
        if separate
        else [("lift and fold constants, remove dead nodes, sort", ("fold", "cleanup", "toposort"))]
    )
    return [
        ("initializers only as initializers (IR < 4)", upgrade_ir_version),
        ("negative dimensions are dynamic", negative_dims_as_dynamic),
        ("infer shapes for folding", infer_shapes_for_folding),
        *[(name, functools.partial(graph_surgery, steps=steps)) for name, steps in surgery],
        ("one initializer per use", split_shared_initializers),
        ("infer shapes", infer_final_shapes),
    ]


#: The IR version from which initializers need not be graph inputs (ONNX 1.4).
IR_INITIALIZERS_NOT_INPUTS = 4


def upgrade_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR 3 (ONNX model-zoo era) requires every initializer to be a graph input too; folding makes
    new initializers and dead-node removal drops inputs, so the model moves to IR 4, where
    initializers are constants of their own (what ONNX Runtime recommends: it cannot fold or fuse
    weights that are also inputs). Opsets are unchanged. Newer models are returned as they are."""
    if model.ir_version >= IR_INITIALIZERS_NOT_INPUTS:
        return model
    model.ir_version = IR_INITIALIZERS_NOT_INPUTS
    weights = {init.name for init in model.graph.initializer}
    kept = [info for info in model.graph.input if info.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def negative_dims_as_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A negative `dim_value` (Paddle2ONNX writes -1 for a dynamic batch) is a dynamic dimension:
    it becomes the symbol `<tensor>_dim<axis>` in the main graph's inputs, outputs and value_info."""
    graph = model.graph
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if not info.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = f"{info.name}_dim{axis}"  # clears dim_value (a oneof)
    return model


def infer_shapes_for_folding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Static sizes read by Shape (e.g. torch.chunk bounds, jax2tf Slice bounds) are inferred
    before folding, so that the shape arithmetic folds to constants."""
    if not any(node.op_type == "Shape" for node in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return infer_shapes(copy)


def infer_final_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes of every tensor, inferred again; InputError for a dimension no runtime can hold."""
    inferred = infer_shapes(model)
    check_dimensions(inferred)
    return inferred


def graph_surgery(model: onnx.ModelProto, steps: tuple[str, ...]) -> onnx.ModelProto:
    """One graph-surgeon import/export (which lifts `Constant` nodes into initializers) with
    `steps` in between: 'fold' (constant sub-graphs, then the folded nodes are removed),
    'cleanup' (dead nodes; graph inputs are kept), 'toposort'. Nodes with subgraphs (If, Loop, Scan)
    are held out meanwhile and put back
    unchanged (see `hold_subgraphs`)."""
    import onnx_graphsurgeon as gs

    onnxruntime().set_default_logger_severity(4)  # graph-surgeon folds with ONNX Runtime sessions
    work = onnx.ModelProto()
    work.CopyFrom(model)
    held = hold_subgraphs(work)
    try:
        graph = gs.import_onnx(work)
        if "fold" in steps:  # folded nodes are left without outputs: cleanup removes them
            graph.fold_constants(error_ok=True, should_exclude_node=lambda node: node.domain == HELD_DOMAIN)
        if "cleanup" in steps or "fold" in steps:
            graph.cleanup(remove_unused_graph_inputs=False)
        if "toposort" in steps:
            graph.toposort()
        result = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise InternalError(
            f"internal error: graph-surgeon cannot process the model ({short_message(exc)}); please report it"
        ) from None
    restore_subgraphs(result, held)
    _copy_model_metadata(model, result)
    return result


def split_shared_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A per-channel initializer (one axis longer than 1: a bias, a norm scale, a shape constant) read
    by several nodes gets one copy per extra use (`<name>__use<k>`). Exporters store identical tensors
    once (torch's dynamo exporter shares one zero bias among every q/k/v/out projection), which would
    couple unrelated channel groups through the one tensor; after the split each use is sliced with its
    own group. Weights with two or more long axes (a conv or linear weight, a tied embedding) stay
    shared: their users are tied layers, which couple for real."""
    graph = model.graph
    shared = {init.name: init for init in graph.initializer if _long_axes(init) == 1}
    protected = {info.name for info in graph.output}
    seen: dict[str, int] = {}
    copies = []
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in shared or name in protected:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(shared[name])
            copy.name = f"{name}__use{seen[name] - 1}"
            node.input[index] = copy.name
            copies.append(copy)
    graph.initializer.extend(copies)
    return model


def _long_axes(init: onnx.TensorProto) -> int:
    return sum(1 for dim in init.dims if dim > 1)


def _copy_model_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    target.ir_version = source.ir_version
    del target.opset_import[:]
    target.opset_import.extend(source.opset_import)
    for field in ("producer_name", "producer_version"):  # unset stays unset (not an empty string)
        if source.HasField(field):
            setattr(target, field, getattr(source, field))
        else:
            target.ClearField(field)
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
