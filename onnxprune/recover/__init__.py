"""Recovery after pruning: least-squares reconstruction of the pruned consumer layers."""

from onnxprune.recover.finetune import FinetuneResult, finetune
from onnxprune.recover.layers import im2col
from onnxprune.recover.reconstruct import Reconstruction, reconstruct
from onnxprune.recover.ridge import NormalEquations

__all__ = ["FinetuneResult", "NormalEquations", "Reconstruction", "finetune", "im2col", "reconstruct"]
