"""Calibration data: batches of model inputs (and optional labels) streamed from a `.npz`/`.npy`
file or an image folder (`class/xxx.jpg`), with a small preprocessing spec.

A model with several inputs (a transformer's `input_ids` and `attention_mask`) is fed from a
`.npz` holding one array per graph input, named like it; a single array (`.npy`, or a `.npz`
array named like the input, `x`, or the first one) feeds a single-input model. Every array is
sliced alike (the same samples of each, batch by batch). Integer inputs (token ids, masks) are
passed as integers: only float inputs see the image preprocessing. A model whose inputs have a
fixed batch size (a TorchScript export traced at batch 1) is fed batches of exactly that size."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Preprocess:
    """How raw images (or uint8 arrays) become model inputs: `x = (resize(img) / scale - mean) / std`,
    then the layout ('nchw' or 'nhwc'; 'auto' follows the model input's shape)."""

    resize: int | None = None
    scale: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "auto"

    @classmethod
    def parse(cls, text: str | None) -> Preprocess:
        """Parse 'resize=32,scale=255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw'."""
        spec = cls()
        for item in filter(None, (text or "").split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            try:
                if key == "resize":
                    spec.resize = int(value)
                elif key == "scale":
                    spec.scale = float(value)
                elif key in ("mean", "std"):
                    setattr(spec, key, tuple(float(v) for v in value.split("/")))
                elif key == "layout" and value in ("nchw", "nhwc", "auto"):
                    spec.layout = value
                else:
                    raise ValueError(key)
            except ValueError:
                raise InputError(
                    f"{{preprocess}}: cannot read '{item}' (keys: resize=INT, scale=FLOAT, "
                    "mean=A/B/C, std=A/B/C, layout=nchw|nhwc|auto)",
                    parameter="preprocess",
                ) from None
        return spec

    def apply(self, images: np.ndarray, channels_first: bool) -> np.ndarray:
        """uint8/float images [N, H, W, C] -> float32 model input."""
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) not in (1, images.shape[-1]):
                raise InputError(
                    f"{{preprocess}}: {key} has {len(values)} values for images with {images.shape[-1]} channels",
                    parameter="preprocess",
                )
        x: np.ndarray = images.astype(np.float32) / self.scale
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        first = channels_first if self.layout == "auto" else self.layout == "nchw"
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if first else x)


@dataclass
class ModelInput:
    """Name, shape and dtype of one graph input of the model."""

    name: str
    shape: tuple
    dtype: np.dtype

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelInput:
        """The first graph input that is not an initializer."""
        return cls.every(model)[0]

    @classmethod
    def every(cls, model: onnx.ModelProto) -> list[ModelInput]:
        """Every graph input that is not an initializer (one with a default value), in graph order."""
        inits = {i.name for i in model.graph.initializer}
        found = []
        for info in model.graph.input:
            if info.name in inits:
                continue
            dims = info.type.tensor_type.shape.dim
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
            found.append(cls(info.name, shape, np.dtype(dtype)))
        return found

    @property
    def integer(self) -> bool:
        """True for integer and boolean inputs (token ids, attention masks): never preprocessed."""
        return self.dtype.kind in "iub"

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the input requires (a fixed first dimension), or None when it is dynamic."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0 else None

    @property
    def channels_first(self) -> bool:
        """True for [N, C, H, W] inputs with few channels (C <= 4 at axis 1)."""
        return len(self.shape) == 4 and isinstance(self.shape[1], int) and self.shape[1] <= 4


@dataclass
class CalibrationData:
    """A calibration set: `batches()` yields (feeds, labels or None), `samples` in all."""

    source: Path
    target: ModelInput
    preprocess: Preprocess
    samples: int
    batch_size: int = 64
    seed: int = 0
    labels_available: bool = False
    #: every graph input of the model (`target` is the first); the others are read from `_extra`
    inputs: list[ModelInput] = field(default_factory=list)
    _files: list[tuple[Path, int]] = field(default_factory=list, repr=False)
    #: the first input's array and the labels (or None)
    _arrays: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)
    #: the arrays of the other inputs, by input name (same sample count as the first)
    _extra: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Stream the set in batches; only one batch of inputs is in memory at a time."""
        for start in range(0, self.samples, self.batch_size):
            yield self.feeds(start, min(start + self.batch_size, self.samples))

    def feeds(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Samples `start:stop` of every model input (by name), and their labels or None."""
        x, y = self._files_batch(start, stop) if self._files else self._array_batch(start, stop)
        feeds = {self.target.name: x}
        for model_input in self.inputs[1:]:
            feeds[model_input.name] = self._prepare(model_input, self._extra[model_input.name][start:stop])
        return feeds, y

    @property
    def num_batches(self) -> int:
        """Number of batches `batches()` yields."""
        return math.ceil(self.samples / self.batch_size)

    def _array_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        assert self._arrays is not None, "a calibration set reads either image files or arrays"
        x, y = self._arrays
        return self._prepare(self.target, x[start:stop]), (None if y is None else np.asarray(y[start:stop]))

    def _prepare(self, model_input: ModelInput, array) -> np.ndarray:
        """A batch of one input's array as the model reads it: integers stay integers (token ids are
        never scaled), uint8 images for a float input are preprocessed, the rest is cast."""
        batch = np.asarray(array)
        if model_input.integer:
            if batch.dtype.kind not in "iub" and not np.array_equal(batch, np.round(batch)):
                raise InputError(
                    f"{{calib}} {self.source}: model input '{model_input.name}' takes integers "
                    f"({model_input.dtype}), but its array holds {batch.dtype} values that are not whole numbers",
                    parameter="calib",
                )
            return batch.astype(model_input.dtype, copy=False)
        if batch.dtype == np.uint8:
            batch = self.preprocess.apply(
                batch if batch.shape[-1] in (1, 3, 4) else batch.transpose(0, 2, 3, 1), model_input.channels_first
            )
        return batch.astype(model_input.dtype, copy=False)

    def _files_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self._files[start:stop]
        images = [_read_image(path, self.preprocess.resize) for path, _ in chosen]
        if len({image.shape for image in images}) > 1:
            raise InputError(
                f"{{calib}} {self.source}: images of different sizes in one batch; add {{preprocess}} resize=SIZE",
                parameter="calib",
            )
        x = self.preprocess.apply(np.stack(images), self.target.channels_first).astype(self.target.dtype, copy=False)
        return x, np.array([label for _, label in chosen], dtype=np.int64)


def load_calibration(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    samples: int | None = None,
    preprocess: str | Preprocess | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> CalibrationData:
    """Open a calibration set for `model`: a .npz/.npy file or an image folder (see the module
    docstring for how several inputs and a fixed batch size are fed)."""
    if batch_size < 1:
        raise InputError(f"{{batch_size}} must be at least 1, got {batch_size}", parameter="batch_size")
    if samples is not None and samples < 1:
        raise InputError(f"{{calib_samples}} must be at least 1, got {samples}", parameter="calib_samples")
    path = Path(path)
    spec = preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess)
    inputs = ModelInput.every(model)
    if not path.exists():
        raise InputError(f"{{calib}} {path}: no such file or folder", parameter="calib")
    data = CalibrationData(path, inputs[0], spec, 0, fed_batch_size(inputs, batch_size), seed, inputs=inputs)
    if path.is_dir():
        if len(inputs) > 1:
            raise InputError(
                f"{{calib}} {path}: an image folder feeds one input, but the model has {len(inputs)} "
                f"({', '.join(i.name for i in inputs)}); use a .npz with one array per input, named like it",
                parameter="calib",
            )
        data.labels_available = True
        data._files = _image_files(path, seed)
        total = len(data._files)
    else:
        first, labels, data._extra = _load_arrays(path, inputs)
        data._arrays = (first, labels)
        data.labels_available = labels is not None
        total = len(first)
    data.samples = min(total, samples) if samples else total
    fixed = fed_batch_size(inputs, 1)  # a fixed batch size: whole batches only
    data.samples -= data.samples % fixed
    if data.samples < 1:
        raise InputError(
            f"{{calib}} {path}: no samples found" + (f" (the model takes batches of exactly {fixed})" if total else ""),
            parameter="calib",
        )
    _check_sample_shape(data)
    return data


def fed_batch_size(inputs: list[ModelInput], requested: int) -> int:
    """The batch size the model is fed at: the fixed batch size of its inputs (the first input that
    has one), else `requested`."""
    return next((i.fixed_batch for i in inputs if i.fixed_batch is not None), requested)


def _check_sample_shape(data: CalibrationData) -> None:
    """Raise InputError when a (preprocessed) sample does not fit a model input's fixed sizes."""
    feeds, _ = data.feeds(0, 1)
    for model_input in data.inputs:
        x, expected = feeds[model_input.name], model_input.shape
        fixed = [e is None or e == got for e, got in zip(expected[1:], x.shape[1:])]
        if len(x.shape) != len(expected) or not all(fixed):
            want = "x".join("?" if e is None else str(e) for e in expected[1:])
            raise InputError(
                f"{{calib}} {data.source}: samples of shape {'x'.join(map(str, x.shape[1:]))} do not fit "
                f"model input '{model_input.name}' ({want})",
                parameter="calib",
            )


def _load_arrays(path: Path, inputs: list[ModelInput]) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """The first input's array, the labels (or None) and the other inputs' arrays by name."""
    names = [i.name for i in inputs]
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            if len(inputs) > 1:
                raise InputError(
                    f"{{calib}} {path}: a .npy file holds one array, but the model has {len(inputs)} inputs "
                    f"({', '.join(names)}); use a .npz with one array per input, named like it",
                    parameter="calib",
                )
            return array, None, {}
        archive = np.load(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{{calib}} {path}: not a readable .npz/.npy file ({exc})", parameter="calib") from None
    found = list(archive.files)
    if not found:
        raise InputError(f"{{calib}} {path}: the .npz file holds no arrays", parameter="calib")
    if len(inputs) == 1:
        key = names[0] if names[0] in found else ("x" if "x" in found else found[0])
        keys = [key]
    else:
        missing = [n for n in names if n not in found]
        if missing:
            raise InputError(
                f"{{calib}} {path}: no array for model input {', '.join(repr(n) for n in missing)} "
                f"(the file holds {', '.join(repr(f) for f in found)}); a model with several inputs needs "
                "one array per input, named like it",
                parameter="calib",
            )
        keys = names
    arrays = {name: archive[key] for name, key in zip(names, keys)}
    labels = archive["y"] if "y" in found and "y" not in keys else None
    lengths = {name: len(a) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(
            f"{{calib}} {path}: the inputs' arrays hold different numbers of samples "
            f"({', '.join(f'{n}: {c}' for n, c in lengths.items())})",
            parameter="calib",
        )
    first = arrays.pop(names[0])
    return first, labels, arrays


def _image_files(folder: Path, seed: int) -> list[tuple[Path, int]]:
    """All images as (path, label index by sorted class folder), in a seeded random order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [
        (f, label)
        for label, name in enumerate(classes)
        for f in sorted((folder / name).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(
            f"{{calib}} {folder}: no images in class sub-folders (expected class/xxx.jpg)", parameter="calib"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[i] for i in order]


def _read_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                bilinear = Image.BILINEAR  # type: ignore[attr-defined]  # PIL defines it at run time
                image = image.resize((size, size), bilinear)
            return np.asarray(image)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"{{calib}}: cannot read image {path} ({exc})", parameter="calib") from None
