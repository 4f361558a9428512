"""Load, normalize and save ONNX models.

Normalization lifts `Constant` nodes into initializers, folds constant sub-graphs (the shape
arithmetic around Pad/Reshape), removes dead nodes, sorts topologically and infers shapes.
Weight values are never changed; the dynamic batch dimension stays dynamic.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InputError, InternalError
from .runtime import onnxruntime

#: Initializers larger than this in total are saved as external data next to the model.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass
class LoadedModel:
    """A model as read from disk, with the SHA-256 of the bytes it came from."""

    model: onnx.ModelProto
    sha256: str
    path: Path | None


def load_model(source: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    """Read an ONNX model (with its external data) from a path, or take a ModelProto as is."""
    if isinstance(source, onnx.ModelProto):
        serialized = source.SerializeToString()
        digest = hashlib.sha256(serialized).hexdigest()
        check_structure(source)
        check_weight_shapes(source, len(serialized))
        return LoadedModel(source, digest, None)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises several unrelated types on bad bytes
        raise InputError(f"{path}: not a readable ONNX model ({_short(exc)})") from None
    size = len(data)
    del data
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model with a graph (no nodes found)")
    check_structure(model, f"{path}: ")
    external = check_external_locations(model, path.parent)
    check_weight_shapes(model, size + sum(p.stat().st_size for p in external), f"{path}: ")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise InputError(f"{path}: cannot read the model's external data ({_short(exc)})") from None
    return LoadedModel(model, digest, path)


def check_structure(model: onnx.ModelProto, where: str = "") -> None:
    """ONNX's structural checker (unique names, every input defined, topological order, opsets,
    op schemas and attributes), run on a copy whose initializers are empty stand-ins: cheap for
    any model size, and the weights are neither copied nor read. Text that is not UTF-8 (which
    protobuf only notices when it is read) is an InputError too."""
    try:
        skeleton = copy_without_initializers(model)
        for init in model.graph.initializer:
            stand_in = skeleton.graph.initializer.add()
            stand_in.name, stand_in.data_type = init.name, init.data_type
            stand_in.dims.append(0)
        _read_all_text(skeleton)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{where}the input model is not valid ONNX (text that is not UTF-8: {_short(exc)})") from None
    graph = skeleton.graph
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape"):
            info.type.tensor_type.shape.SetInParent()  # unknown rank: ONNX Runtime accepts it, so do we
    try:
        onnx.checker.check_model(skeleton)
    except Exception as exc:  # ValidationError, or a protobuf error on a corrupt proto
        raise InputError(f"{where}the input model is not valid ONNX ({_short(exc)})") from None
    if not model.graph.output:
        raise InputError(f"{where}the model's graph has no outputs")


def _read_all_text(message) -> None:
    """Read every field of a message tree once (protobuf decodes strings only when read)."""
    for descriptor, value in message.ListFields():
        if descriptor.type != descriptor.TYPE_MESSAGE:
            continue
        repeated = getattr(descriptor, "is_repeated", None)
        if repeated is None:  # protobuf < 5
            repeated = descriptor.label == descriptor.LABEL_REPEATED
        for item in (value if repeated else [value]):
            _read_all_text(item)


#: A static dimension above this cannot belong to a model that runs (ONNX Runtime's limit).
MAX_DIM = (1 << 31) - 1


def check_dimensions(model: onnx.ModelProto) -> None:
    """InputError when shape inference found a dimension no runtime could allocate (an attribute
    such as pads or kernel_shape set to a huge value)."""
    for info in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if info.type.HasField("tensor_type"):
            for dim in info.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and not 0 <= dim.dim_value <= MAX_DIM:
                    raise InputError(f"tensor '{info.name}' would have a dimension of {dim.dim_value}: "
                                     "no runtime can run this model (check the attributes that size it)")


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


def check_weight_shapes(model: onnx.ModelProto, stored_bytes: int, where: str = "") -> None:
    """InputError for an initializer whose shape has a negative dimension or more elements than
    the files can hold (two per byte at most: int4): a corrupt shape must not make onnxprune
    allocate terabytes."""
    limit = 2 * stored_bytes + 64
    for init in model.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
            if dim < 0 or count > limit:
                raise InputError(f"{where}weight '{init.name}' has shape {list(init.dims)}, more values than "
                                 f"the model's {stored_bytes} bytes can hold")


def check_external_locations(model: onnx.ModelProto, folder: Path) -> set[Path]:
    """Every external-data file must be a regular file inside the model's folder (after resolving
    symbolic links): a model cannot make onnxprune read files elsewhere (`../`, absolute paths).
    Returns the files."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    root, files = folder.resolve(), set()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        inside = location and not Path(location).is_absolute() and target.is_relative_to(root)
        if not inside:
            raise InputError(f"weight '{tensor.name}': external data location {location!r} is outside the "
                             "model's folder; refusing to read it")
        if not target.is_file():
            raise InputError(f"weight '{tensor.name}': external data file {location!r} not found beside the model")
        files.add(target)
    return files


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def normalize(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return a normalized copy: constants lifted and folded, dead nodes removed, shapes inferred.

    Large weights that no constant sub-graph reads are set aside meanwhile (graph-surgeon and
    shape inference copy the model several times) and put back once, at the end. `in_place`:
    turn `model` itself into the normalized model, so those weights are never copied."""
    light, detached = _detach_large_weights(model)
    normalized = _normalize(light)
    check_normalized(model, normalized)
    if not in_place:
        return _reattach(normalized, detached)
    _transplant(normalized, model, detached)
    return model


#: Weights above this size are set aside during normalization when no foldable node reads them.
DETACH_BYTES = 1 << 20
_DETACHED = "onnxprune-detached"


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
        return f"ONNX checker: {_short(exc)}"
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime: {_short(exc)}"
    return None


def _detach_large_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of the model in which large initializers are empty stand-ins (data location
    external), unless a node whose inputs are all constant reads them (folding needs the values);
    returns it and the set-aside originals by name (not copied)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer} | \
        {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    folded_inputs = {name for node in graph.node if node.input and all(i in constants or not i for i in node.input)
                     for name in node.input}
    light, detached = copy_without_initializers(model), {}
    for init in graph.initializer:
        entry = light.graph.initializer.add()
        if init.name in folded_inputs or tensor_nbytes(init) <= DETACH_BYTES or init.data_location == onnx.TensorProto.EXTERNAL:
            entry.CopyFrom(init)
            continue
        entry.name, entry.data_type, entry.data_location = init.name, init.data_type, onnx.TensorProto.EXTERNAL
        entry.dims.extend(init.dims)
        location = entry.external_data.add()
        location.key, location.value = "location", _DETACHED
        detached[init.name] = init
    return light, detached


def _reattach(model: onnx.ModelProto, detached: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Put the set-aside weights back in place of their stand-ins."""
    for init in model.graph.initializer:
        if init.name in detached and init.data_location == onnx.TensorProto.EXTERNAL:
            init.CopyFrom(detached[init.name])
    return model


def _transplant(normalized: onnx.ModelProto, target: onnx.ModelProto, detached: dict) -> None:
    """Make `target` (which holds the set-aside weights) equal to `normalized`, whose stand-ins
    name them: everything but those weights is replaced; they stay where they are."""
    kept = {i.name for i in normalized.graph.initializer
            if i.name in detached and i.data_location == onnx.TensorProto.EXTERNAL}
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
    _copy_fields(normalized.graph, graph, skip="")
    _copy_fields(normalized, target, skip="graph")


def _normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run every normalization pass in order (the graph-surgeon steps in one import/export)."""
    for _, run in normalization_passes(separate=False):
        model = run(model)
    return model


def normalization_passes(separate: bool = False) -> list[tuple[str, "Callable"]]:
    """The normalization passes in order, as (name, function ModelProto -> ModelProto). Each
    returns a valid model when given one (tests check the model after every pass). `separate`:
    lifting, folding, dead-node removal and sorting as four passes (each a graph-surgeon
    import/export) instead of one."""
    surgery = [("lift constants", ()), ("remove dead nodes", ("cleanup",)), ("fold constants", ("fold",)),
               ("sort topologically", ("toposort",))] if separate else \
        [("lift and fold constants, remove dead nodes, sort", ("fold", "cleanup", "toposort"))]
    return [("initializers only as initializers (IR < 4)", upgrade_ir_version),
            ("negative dimensions are dynamic", negative_dims_as_dynamic),
            ("infer shapes for folding", infer_shapes_for_folding),
            *[(name, functools.partial(graph_surgery, steps=steps)) for name, steps in surgery],
            ("infer shapes", infer_final_shapes)]


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
    'cleanup' (dead nodes; graph inputs are kept), 'toposort'. Nodes with subgraphs (If, Loop, Scan) are held out meanwhile and put back
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
        raise InternalError(f"internal error: graph-surgeon cannot process the model ({_short(exc)}); "
                            "please report it") from None
    restore_subgraphs(result, held)
    _copy_model_metadata(model, result)
    return result


#: Domain of the stand-ins for nodes with subgraphs while graph-surgeon works on the main graph.
HELD_DOMAIN = "onnxprune.held"


def has_subgraph(node: onnx.NodeProto) -> bool:
    """True for a node with a graph attribute (If, Loop, Scan, ...)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def subgraph_outer_reads(node: onnx.NodeProto) -> list[str]:
    """Names that the node's subgraphs (at any depth) read from the enclosing scopes: ONNX
    subgraphs see outer tensors by name, without declaring them as inputs."""
    reads: list[str] = []
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            reads.extend(_graph_outer_reads(graph))
    return list(dict.fromkeys(reads))


def _graph_outer_reads(graph: onnx.GraphProto) -> list[str]:
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer} | \
        {s.values.name for s in graph.sparse_initializer}
    reads = []
    for node in graph.node:
        reads += [name for name in list(node.input) + subgraph_outer_reads(node) if name and name not in defined]
        defined.update(node.output)
    reads += [out.name for out in graph.output if out.name not in defined]
    return reads


def hold_subgraphs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Replace every main-graph node with subgraphs by a stand-in without attributes whose inputs
    are its own followed by the outer tensors its subgraphs read (so dead-node removal keeps them
    and sorting places the node after them), in domain `HELD_DOMAIN` (never folded). Returns the
    originals by stand-in name, for `restore_subgraphs`."""
    held = {}
    for index, node in enumerate(model.graph.node):
        if not has_subgraph(node):
            continue
        key = f"onnxprune_held_{index}"
        original = onnx.NodeProto()
        original.CopyFrom(node)
        held[key] = original
        outer = [name for name in subgraph_outer_reads(node) if name not in node.input]
        node.ClearField("attribute")
        node.op_type, node.domain, node.name = "Held", HELD_DOMAIN, key
        node.input.extend(outer)
    return held


def restore_subgraphs(model: onnx.ModelProto, held: dict[str, onnx.NodeProto]) -> None:
    """Put the original nodes (subgraphs byte for byte) back in place of their stand-ins."""
    for node in model.graph.node:
        if node.domain == HELD_DOMAIN and node.name in held:
            node.CopyFrom(held[node.name])


def _keep_subgraphs(source: onnx.GraphProto, result: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node with subgraphs in `result` its original from `source` (shape inference
    writes value_info and shapes into subgraphs; normalization leaves them as they were)."""
    originals = {tuple(n.output): n for n in source.node if has_subgraph(n)}
    if not originals:
        return result
    for node in result.graph.node:
        original = originals.get(tuple(node.output))
        if original is not None:
            node.CopyFrom(original)
    return result


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


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop stale intermediate shapes and infer them again (graph inputs/outputs are kept).

    ONNX Runtime's symbolic shape inference goes through computed Reshape targets and keeps
    symbolic batch dims; ONNX's own inference is the fallback. Both copy the model, so large
    weights are set aside meanwhile: then `model` itself is updated and returned.
    """
    light, detached = _detach_large_weights(model)
    if not detached:
        return _infer_shapes(light)
    _transplant(_infer_shapes(light), model, detached)
    return model


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Infer shapes of the main graph; subgraphs are kept as they were."""
    del model.graph.value_info[:]
    originals = onnx.GraphProto()
    originals.node.extend(node for node in model.graph.node if has_subgraph(node))
    return _keep_subgraphs(originals, _inferred(model))


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        SymbolicShapeInference = _symbolic_shape_inference()
        with _in_scratch_folder():  # on failure it saves a debug copy of the model into the cwd
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return inferred
    except InputError:
        raise
    except Exception:  # the symbolic engine refuses some graphs (or sympy is missing): ONNX's own
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise InputError(f"shape inference failed ({_short(exc)})") from None


@functools.lru_cache(maxsize=1)
def _symbolic_shape_inference():
    """ONNX Runtime's SymbolicShapeInference, loaded from its file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which imports
    torch when torch is installed (seconds of start-up for every command)."""
    import importlib.util

    ort = onnxruntime()
    path = Path(ort.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxprune._symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


@contextlib.contextmanager
def _in_scratch_folder():
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without the main graph's initializers (cheap even for big models)."""
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip="graph")
    _copy_fields(model.graph, shell.graph, skip="initializer")
    return shell


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns the tensors `names` (float32) as graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in dict.fromkeys(names) if n not in present)
    return copy


def _copy_fields(source, target, skip: str) -> None:
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


def initializers(model: onnx.ModelProto) -> "WeightArrays":
    """All initializers of the main graph as numpy arrays, by name (InputError for a tensor whose
    data does not fit its shape or type); large ones are read from the model when asked for."""
    return WeightArrays(model)


#: Initializers larger than this are converted to numpy on each access instead of being kept:
#: the model already holds them, and a second resident copy of a big model's weights is what
#: makes it run out of memory.
LAZY_BYTES = 64 << 20


class WeightArrays(Mapping):
    """Read-only mapping name -> numpy value of a model's initializers. Small tensors are converted
    once; tensors over `LAZY_BYTES` are converted on every access (callers keep what they need,
    and a large tensor whose data do not fit its shape raises InputError when first read)."""

    def __init__(self, model: onnx.ModelProto):
        self._tensors = {init.name: init for init in model.graph.initializer}
        self._small = {name: tensor_value(init) for name, init in self._tensors.items()
                       if tensor_nbytes(init) <= LAZY_BYTES}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._small:
            return self._small[name]
        return tensor_value(self._tensors[name])

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values from its shape and type. Unlike `ByteSize()`, which serializes
    the tensor (a transient copy of a large weight), it costs nothing."""
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an undefined or unusual type: measure it the slow way
        return tensor.ByteSize()
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array; InputError when its data disagree with its shape or type."""
    try:
        value = numpy_helper.to_array(tensor)
    except Exception as exc:  # ValueError (size), TypeError/KeyError (data type)
        raise InputError(f"weight '{tensor.name}' cannot be read: its data do not fit its shape "
                         f"{list(tensor.dims)} and type ({_short(exc)})") from None
    if list(value.shape) != list(tensor.dims):
        raise InputError(f"weight '{tensor.name}' holds {value.size} values but its shape is {list(tensor.dims)}")
    return value


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Shape of every known tensor: ints for static dims, the symbol (str) or None for dynamic ones."""
    shapes: dict[str, tuple] = {}
    infos = list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    for info in infos:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(_dim(d) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _dim(dim) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically: readers (and a later run after a kill) see the previous file or
    the new one, never a partial one.

    Models whose weights exceed ~1.8 GB are written with their weights as external data in
    `<name>.<hash>.data` beside the model (`hash`: the first 12 hex digits of its SHA-256). The
    data file is complete before the model file that names it replaces the old one, so an
    interruption leaves the old pair intact; data files of earlier versions are removed after.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(tensor_nbytes(init) for init in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    if big:
        return _save_with_external_data(model, path)
    atomic_write_bytes(path, model.SerializeToString())
    _remove_old_data_files(path, keep=None)
    return path


#: External data offsets are multiples of this (ONNX Runtime can map aligned data).
DATA_ALIGNMENT = 4096


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    """Weights over 1 KiB to one data file (written under a temporary name, then renamed to its
    content hash), then the model that points at it (atomically); no copy of the whole model."""
    shell = copy_without_initializers(model)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    digest, placed = hashlib.sha256(), []
    try:
        with os.fdopen(fd, "wb") as handle:
            for init in model.graph.initializer:
                entry = shell.graph.initializer.add()
                if tensor_nbytes(init) <= 1024:
                    entry.CopyFrom(init)
                    continue
                placed.append(entry)
                _write_external(handle, init, entry, digest)
            handle.flush()
            os.fsync(handle.fileno())
        data_name = f"{path.name}.{digest.hexdigest()[:12]}.data"
        for entry in placed:
            entry.external_data[0].value = data_name
        os.replace(tmp, path.parent / data_name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_bytes(path, shell.SerializeToString())
    _remove_old_data_files(path, keep=data_name)
    return path


def _write_external(handle, init: onnx.TensorProto, entry: onnx.TensorProto, digest) -> None:
    """Append one tensor's bytes (aligned) to the data file; `entry` becomes its external reference."""
    padding = -handle.tell() % DATA_ALIGNMENT
    if padding:
        handle.write(b"\0" * padding)
        digest.update(b"\0" * padding)
    data = init.raw_data if init.HasField("raw_data") else tensor_value(init).tobytes()
    offset = handle.tell()
    handle.write(data)
    digest.update(data)
    entry.name, entry.data_type, entry.data_location = init.name, init.data_type, onnx.TensorProto.EXTERNAL
    entry.dims.extend(init.dims)
    for key, value in (("location", ""), ("offset", str(offset)), ("length", str(len(data)))):
        item = entry.external_data.add()
        item.key, item.value = key, value


def _remove_old_data_files(path: Path, keep: str | None) -> None:
    """Data files `<name>.<12 hex>.data` of earlier writes of `path`, other than `keep`."""
    for old in path.parent.glob(f"{glob.escape(path.name)}.*.data"):
        stem = old.name[len(path.name) + 1:-len(".data")]
        if old.name != keep and len(stem) == 12 and all(c in "0123456789abcdef" for c in stem):
            old.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    """Temporary files of a write to `path` are `.<name>.<pid>.<random>.tmp` beside it."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files left beside `path` by writes whose process no longer exists (a
    SIGKILL cannot be cleaned up after; the next write to the same path does it)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync, then rename over `path`: readers see
    the old file or the new one, never a partial one. Temporaries of earlier writes to `path`
    whose process is gone (SIGKILL) are removed first."""
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a written model should not be private
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
