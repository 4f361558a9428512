"""Calibration data: batches of model inputs (and optional labels) streamed from a `.npz`/`.npy`
file or an image folder (`class/xxx.jpg`), with a small preprocessing spec."""

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
    """Name, shape and dtype of the model's first graph input."""

    name: str
    shape: tuple
    dtype: np.dtype

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelInput:
        """The first graph input that is not an initializer."""
        inits = {i.name for i in model.graph.initializer}
        info = next(i for i in model.graph.input if i.name not in inits)
        dims = info.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        return cls(info.name, shape, np.dtype(dtype))

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
    _files: list[tuple[Path, int]] = field(default_factory=list, repr=False)
    _arrays: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Stream the set in batches; only one batch of inputs is in memory at a time."""
        for start in range(0, self.samples, self.batch_size):
            stop = min(start + self.batch_size, self.samples)
            x, y = self._files_batch(start, stop) if self._files else self._array_batch(start, stop)
            yield {self.target.name: x}, y

    @property
    def num_batches(self) -> int:
        """Number of batches `batches()` yields."""
        return math.ceil(self.samples / self.batch_size)

    def _array_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        assert self._arrays is not None, "a calibration set reads either image files or arrays"
        x, y = self._arrays
        batch = np.asarray(x[start:stop])
        if batch.dtype == np.uint8:
            batch = self.preprocess.apply(
                batch if batch.shape[-1] in (1, 3, 4) else batch.transpose(0, 2, 3, 1), self.target.channels_first
            )
        return batch.astype(self.target.dtype, copy=False), (None if y is None else np.asarray(y[start:stop]))

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
    """Open a calibration set for `model`: a .npz/.npy file or an image folder."""
    if batch_size < 1:
        raise InputError(f"{{batch_size}} must be at least 1, got {batch_size}", parameter="batch_size")
    if samples is not None and samples < 1:
        raise InputError(f"{{calib_samples}} must be at least 1, got {samples}", parameter="calib_samples")
    path = Path(path)
    spec = preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess)
    target = ModelInput.of(model)
    if not path.exists():
        raise InputError(f"{{calib}} {path}: no such file or folder", parameter="calib")
    if path.is_dir():
        data = CalibrationData(path, target, spec, 0, batch_size, seed, True)
        data._files = _image_files(path, seed)
        total = len(data._files)
    else:
        data = CalibrationData(path, target, spec, 0, batch_size, seed)
        data._arrays = _load_arrays(path, target.name)
        data.labels_available = data._arrays[1] is not None
        total = len(data._arrays[0])
    data.samples = min(total, samples) if samples else total
    if data.samples < 1:
        raise InputError(f"{{calib}} {path}: no samples found", parameter="calib")
    _check_sample_shape(data)
    return data


def _check_sample_shape(data: CalibrationData) -> None:
    """Raise InputError when a (preprocessed) sample does not fit the model input's fixed sizes."""
    x, _ = data._files_batch(0, 1) if data._files else data._array_batch(0, 1)
    expected = data.target.shape
    fixed = [e is None or e == got for e, got in zip(expected[1:], x.shape[1:])]
    if len(x.shape) != len(expected) or not all(fixed):
        want = "x".join("?" if e is None else str(e) for e in expected[1:])
        raise InputError(
            f"{{calib}} {data.source}: samples of shape {'x'.join(map(str, x.shape[1:]))} do not fit "
            f"model input '{data.target.name}' ({want})",
            parameter="calib",
        )


def _load_arrays(path: Path, input_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r"), None
        archive = np.load(path)
    except Exception as exc:
        raise InputError(f"{{calib}} {path}: not a readable .npz/.npy file ({exc})", parameter="calib") from None
    names = list(archive.files)
    if not names:
        raise InputError(f"{{calib}} {path}: the .npz file holds no arrays", parameter="calib")
    key = input_name if input_name in names else ("x" if "x" in names else names[0])
    labels = archive["y"] if "y" in names and key != "y" else None
    return archive[key], labels


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
