"""Load and save ONNX models: structural checks of the input, external data, atomic writes."""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import InputError, short_message
from onnxprune.model.edit import copy_without_initializers
from onnxprune.model.stream import write_model
from onnxprune.model.tensors import is_mapped, tensor_nbytes, tensor_value

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
        raise InputError(f"{path}: not a readable ONNX model ({short_message(exc)})") from None
    size = len(data)
    del data
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model with a graph (no nodes found)")
    check_structure(model, f"{path}: ")
    external = check_external_locations(model, path.parent)
    check_weight_shapes(model, size + sum(p.stat().st_size for p in external), f"{path}: ")
    try:
        map_external_data(model, path.parent)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the model's external data ({short_message(exc)})") from None
    return LoadedModel(model, digest, path)


#: External tensors larger than this stay in their file and are read through memory maps (see
#: tensors.is_mapped); smaller ones are read into the model.
MAP_BYTES = 1 << 20


def map_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Resolve the main graph's external tensors: those over MAP_BYTES keep their data in the file
    (their location becomes the file's absolute path, so `tensor_value` maps them, and a big model
    is never read into memory whole); the others, and external tensors of subgraphs and
    attributes, are read in. ValueError when a tensor's range lies past the end of its file."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, load_external_data_for_tensor

    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL or tensor_nbytes(tensor) <= MAP_BYTES:
            continue
        info = ExternalDataInfo(tensor)
        target = (folder / info.location).resolve()
        length = info.length if info.length is not None else tensor_nbytes(tensor)
        if (info.offset or 0) + length > target.stat().st_size:
            raise ValueError(f"weight '{tensor.name}' lies past the end of {info.location!r}")
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(target)
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not is_mapped(tensor):
            load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


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
        raise InputError(
            f"{where}the input model is not valid ONNX (text that is not UTF-8: {short_message(exc)})"
        ) from None
    graph = skeleton.graph
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape"):
            info.type.tensor_type.shape.SetInParent()  # unknown rank: ONNX Runtime accepts it, so do we
    try:
        onnx.checker.check_model(skeleton)
    except Exception as exc:  # ValidationError, or a protobuf error on a corrupt proto
        raise InputError(f"{where}the input model is not valid ONNX ({short_message(exc)})") from None
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
        for item in value if repeated else [value]:
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
                    raise InputError(
                        f"tensor '{info.name}' would have a dimension of {dim.dim_value}: "
                        "no runtime can run this model (check the attributes that size it)"
                    )


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
                raise InputError(
                    f"{where}weight '{init.name}' has shape {list(init.dims)}, more values than "
                    f"the model's {stored_bytes} bytes can hold"
                )


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
            raise InputError(
                f"weight '{tensor.name}': external data location {location!r} is outside the "
                "model's folder; refusing to read it"
            )
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
    if any(is_mapped(init) for init in model.graph.initializer):
        atomic_write(path, lambda handle: write_model(model, handle))
    else:
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
    data: bytes | memoryview
    if init.HasField("raw_data"):
        data = init.raw_data
    else:  # a memory map is written as it is (no bytes copy of the whole tensor)
        data = np.ascontiguousarray(tensor_value(init)).reshape(-1).view(np.uint8).data
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
        stem = old.name[len(path.name) + 1 : -len(".data")]
        if old.name != keep and len(stem) == 12 and all(c in "0123456789abcdef" for c in stem):
            old.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    """Temporary files of a write to `path` are `.<name>.<pid>.<random>.tmp` beside it."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files left beside `path` by writes whose process no longer exists (a
    SIGKILL cannot be cleaned up after; the next write to the same path does it)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
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
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write(path: Path, write) -> None:
    """`atomic_write_bytes` with the content written by `write(handle)` (a binary file)."""
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a written model should not be private
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
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
