"""Recovery after pruning: least-squares reconstruction of the pruned consumer layers."""

from .reconstruct import NormalEquations, Reconstruction, im2col, reconstruct
from .finetune import FinetuneResult, finetune

__all__ = ["NormalEquations", "Reconstruction", "im2col", "reconstruct"]
