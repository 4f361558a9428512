"""onnxprune: structured channel pruning of ONNX models, verified against a masked reference."""

from onnxprune.api import PruneResult, analyze, prune
from onnxprune.errors import (
    InputError,
    InternalError,
    OnnxPruneError,
    VerificationError,
)

__version__ = "0.1.0"
__all__ = [
    "InputError",
    "InternalError",
    "OnnxPruneError",
    "PruneResult",
    "VerificationError",
    "analyze",
    "prune",
    "__version__",
]
