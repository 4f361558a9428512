"""Access to ONNX Runtime, with a clear message when neither runtime build is installed."""

from __future__ import annotations

from .errors import InputError


def onnxruntime():
    """The `onnxruntime` module (from the onnxruntime or onnxruntime-gpu package)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("ONNX Runtime is not installed: pip install 'onnxprune[cpu]' "
                         "(or 'onnxprune[gpu]' for CUDA/TensorRT)") from None
    return ort
