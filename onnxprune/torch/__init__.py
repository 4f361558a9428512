"""Torch interop (the ``torch`` extra): ``to_torch`` (ONNX -> trainable ``nn.Module``) and
``export_onnx`` (back to ONNX)."""

from onnxprune.torch.convert import OPS, OnnxModule, export_onnx, to_torch

__all__ = ["OPS", "OnnxModule", "export_onnx", "to_torch"]
