"""Recovery after pruning: least-squares reconstruction of the pruned consumer layers."""

from onnxprune.recover.finetune import FinetuneResult, finetune
from onnxprune.recover.reconstruct import (
    NormalEquations,
    Reconstruction,
    im2col,
    reconstruct,
)

__all__ = ["FinetuneResult", "NormalEquations", "Reconstruction", "finetune", "im2col", "reconstruct"]
