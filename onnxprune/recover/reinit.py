"""Training the pruned architecture from scratch (``finetune --reinit``), as in "Rethinking the
Value of Network Pruning" (Liu et al., 2019).

:func:`reinitialize` gives every trainable tensor of an :class:`~onnxprune.torch.convert.OnnxModule`
a fresh value drawn from torch's (seeded) generator, with the shape it had: convolution weights
Kaiming-normal (fan-out, ReLU gain, as torchvision's ResNets), Gemm / MatMul weights and their
biases as ``nn.Linear`` initializes them (Kaiming-uniform, a = √5), convolution biases 0,
normalization scales 1 and shifts 0, anything else N(0, 0.02²). BatchNormalization is put back
after the layers it was folded into (``unfold_batchnorm(..., identity=False)``).

:func:`scratch_epochs` is the epoch budget: Scratch-E trains the given epochs; Scratch-B scales
them by the FLOPs the pruning saved, epochs × original MACs / pruned MACs, at most doubled (the
paper's rule when the pruned model saves more than 2× FLOPs), rounded up.
"""

from __future__ import annotations

import math

#: --scratch-budget choices: epochs as given (Scratch-E) or scaled by the FLOPs saved (Scratch-B)
BUDGETS = ("epochs", "flops")
#: Scratch-B never more than doubles the epochs
MAX_SCALE = 2.0

_NORM_OPS = ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization")


def _roles(module) -> dict[str, tuple[str, dict, int]]:
    """Parameter name -> (op type, attributes, input slot) of a node that reads it."""
    roles: dict[str, tuple[str, dict, int]] = {}
    for op_type, ins, _, attrs in module.graph_nodes:
        for slot, name in enumerate(ins):
            roles.setdefault(name, (op_type, attrs, slot))
    return roles


def _fan_in(op_type: str, attrs: dict, weight) -> int:
    """The fan-in of a layer weight: Conv [O, I/g, k…]; Gemm [O, I] with transB else [I, O];
    MatMul [I, O] (x @ W)."""
    if op_type == "Conv":
        return max(1, weight[0].numel())
    if op_type == "Gemm" and attrs.get("transB", 0):
        return max(1, weight.shape[-1])
    return max(1, weight.shape[0] if weight.dim() >= 2 else weight.numel())


def reinitialize(module) -> list[str]:
    """Fresh values for every trainable tensor of `module` (module docstring); returns their names."""
    import torch
    from torch import nn

    roles = _roles(module)
    weights = {ins[2]: ins[1] for op, ins, _, _ in module.graph_nodes if op in ("Conv", "Gemm") and len(ins) > 2}
    changed = []
    with torch.no_grad():
        for name, param in module.onnx_parameters.items():
            op_type, attrs, slot = roles.get(name, ("", {}, -1))
            if op_type in ("Conv", "ConvTranspose") and slot == 1:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")
            elif op_type in ("Gemm", "MatMul") and param.dim() == 2:
                bound = 1 / math.sqrt(_fan_in(op_type, attrs, param))
                nn.init.uniform_(param, -bound, bound)  # = kaiming_uniform(a=√5), nn.Linear's init
            elif op_type == "Gemm" and slot == 2:
                layer = roles[weights[name]]
                bound = 1 / math.sqrt(_fan_in(layer[0], layer[1], module.onnx_tensors[weights[name]]))
                nn.init.uniform_(param, -bound, bound)
            elif op_type == "Conv" and slot == 2:
                nn.init.zeros_(param)
            elif op_type in _NORM_OPS and slot in (1, 2):
                param.fill_(1.0 if slot == 1 else 0.0)
            else:
                nn.init.normal_(param, 0.0, 0.02)
            changed.append(name)
    return changed


def scratch_epochs(epochs: int, budget: str, original_macs: int | None, pruned_macs: int) -> int:
    """The epochs of a from-scratch run under `budget` (module docstring)."""
    if budget == "epochs":
        return epochs
    if original_macs is None:
        raise ValueError("the flops budget needs the original model's MACs")
    scale = min(MAX_SCALE, original_macs / max(pruned_macs, 1))
    return max(epochs, math.ceil(epochs * scale - 1e-9))
