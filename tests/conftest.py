"""Shared pytest fixtures for onnxprune's tests.

* ``zoo_model(name, exporter)``: path of the zoo model ``name`` -- a key of ``ZOO`` or of
  ``TOPOLOGY_ZOO`` (see ``tests/zoo.py``; both are merged in ``ALL_MODELS``) -- exported
  with ``exporter`` -- ``"torchscript"`` (opset 17, BN folded into the conv before it),
  ``"torchscript_bn"`` (opset 17, BatchNormalization nodes kept) or ``"dynamo"`` (opset 20, BN
  folded likewise, external data in ``<file>.data``). Each (name, exporter) pair is exported at
  most once per session; treat the file as read-only (copy it before modifying it).
* ``shared_dir``: ``../shared`` beside the repository (real CIFAR-10 models and data); tests
  that use it are skipped when it is missing.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # pyproject sets pythonpath = ["tests"]; this is a fallback
    sys.path.insert(0, str(TESTS_DIR))

from zoo import ALL_MODELS, EXPORTERS, export_onnx  # noqa: E402


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory) -> Callable[[str, str], pathlib.Path]:
    """Factory ``zoo_model(name, exporter="torchscript") -> Path`` of the exported ``.onnx``."""
    cache: dict[tuple[str, str], pathlib.Path] = {}
    root = tmp_path_factory.mktemp("zoo")

    def get(name: str, exporter: str = "torchscript") -> pathlib.Path:
        if name not in ALL_MODELS:
            raise KeyError(f"unknown zoo model {name!r}; known: {sorted(ALL_MODELS)}")
        if exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {exporter!r}; known: {EXPORTERS}")
        key = (name, exporter)
        if key not in cache:
            module, shape = ALL_MODELS[name]()
            out_dir = root / exporter  # one folder per exporter: <name>.onnx (+ <name>.onnx.data)
            cache[key] = export_onnx(
                module,
                shape,
                out_dir / f"{name}.onnx",
                dynamo=exporter == "dynamo",
                keep_bn=exporter == "torchscript_bn",
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """``../shared`` relative to the repository root; skips the test when it does not exist."""
    path = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path}")
    return path
