"""BatchNormalization back for training (``finetune --unfold-bn``) and folded again for export.

Exported models usually have their BatchNormalization folded into the convolutions: a Conv/Gemm
with a bias, followed by a nonlinearity or a residual Add, and no BN left in the graph
(:func:`folded_layers` finds them). :func:`unfold_batchnorm` puts a BN node back after each of
them in an :class:`~onnxprune.torch.convert.OnnxModule`, initialized so that the module computes
exactly what it did: running mean and variance are the channel statistics of the layer's output
on training data, γ = sqrt(var + ε) and β = mean, so BN(x) = x with the running statistics.
In training mode the new nodes normalize with batch statistics (``module.batch_statistics``), so
SGD sees a normalized network. :func:`fold_batchnorm` folds them back into the layers' weights
and biases (eval-mode BN is affine) and removes them, so the exported ONNX has no BN nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.recover.batchnorm import channel_statistics

#: ops that count as the nonlinearity after a folded Conv/Gemm + BN
NONLINEAR = frozenset(
    {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Gelu"}
)
#: BN epsilon of the unfolded nodes
EPSILON = 1e-5
#: samples whose statistics initialize the unfolded nodes
STATISTICS_SAMPLES = 1024


@dataclass(frozen=True)
class Unfolded:
    """One BN node put back after a layer: the layer's output name and the BN tensors' names."""

    layer_output: str  # the name the BN node now writes (the layer writes `raw`)
    raw: str
    scale: str
    bias: str
    mean: str
    var: str


def folded_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv/Gemm nodes whose BatchNormalization the exporter folded: constant weight and bias
    (each used by this node only), output read only by nonlinearities or residual Adds (both
    operands computed), and no BatchNormalization anywhere in the graph."""
    graph = model.graph
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        return []
    inits = {t.name for t in graph.initializer}
    consts = inits | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def foldable(node: onnx.NodeProto) -> bool:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.output[0] in outputs:
            return False
        weight, bias = node.input[1], node.input[2]
        if weight not in inits or bias not in inits or len(readers[weight]) + len(readers[bias]) != 2:
            return False
        if node.op_type == "Gemm" and _attr(node, "beta", 1.0) == 0:
            return False
        after = readers.get(node.output[0], [])
        return bool(after) and all(
            r.op_type in NONLINEAR or (r.op_type == "Add" and not set(r.input) & consts) for r in after
        )

    return [n for n in graph.node if foldable(n)]


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def unfold_batchnorm(module, model: onnx.ModelProto, data, identity: bool = True) -> list[Unfolded]:
    """Put a BN node back after every layer of :func:`folded_layers` in `module` (built from
    `model`). `identity`: statistics from the first samples of `data` and BN(x) = x (see the
    module docstring); otherwise the fresh init of training from scratch (γ 1, β 0, mean 0, var 1)."""
    import torch

    layers = [n.output[0] for n in folded_layers(model)]
    if not layers:
        return []
    if identity:
        batches = max(1, -(-STATISTICS_SAMPLES // data.batch_size))
        stats = channel_statistics(model, layers, data, batches)
    unfolded = []
    nodes = module.graph_nodes
    for out in layers:
        index = next(i for i, node in enumerate(nodes) if node[2][0] == out)
        op_type, ins, outs, attrs = nodes[index]
        names = Unfolded(out, *(f"{out}/unfolded_bn/{part}" for part in ("input", "scale", "bias", "mean", "var")))
        if identity:
            mean, var = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in stats[out])
            scale, bias = torch.sqrt(var + EPSILON), mean.clone()
        else:
            channels = module.onnx_tensors[ins[2]].numel()
            mean, var = torch.zeros(channels), torch.ones(channels)
            scale, bias = torch.ones(channels), torch.zeros(channels)
        for name, value, trainable in ((names.scale, scale, True), (names.bias, bias, True)):
            module.add_tensor(name, value, trainable)
        for name, value in ((names.mean, mean), (names.var, var)):
            module.add_tensor(name, value, False)
        nodes[index] = (op_type, ins, [names.raw, *outs[1:]], attrs)
        bn_inputs = [names.raw, names.scale, names.bias, names.mean, names.var]
        nodes.insert(index + 1, ("BatchNormalization", bn_inputs, [out], {"epsilon": EPSILON, "_num_outputs": 1}))
        module.batch_statistics.add(out)
        unfolded.append(names)
    return unfolded


def fold_batchnorm(module, unfolded: list[Unfolded]) -> None:
    """Fold the BN nodes of `unfolded` (their running statistics and affine parameters) into the
    preceding layers' weight and bias, and remove them from `module`."""
    import torch

    nodes = module.graph_nodes
    tensors = module.onnx_tensors
    with torch.no_grad():
        for names in unfolded:
            index = next(i for i, node in enumerate(nodes) if node[2][0] == names.raw)
            op_type, ins, outs, attrs = nodes[index]
            factor = tensors[names.scale] / torch.sqrt(tensors[names.var] + EPSILON)
            shift = tensors[names.bias] - tensors[names.mean] * factor
            weight, bias = tensors[ins[1]], tensors[ins[2]]
            if op_type == "Conv":
                weight.mul_(factor.reshape(-1, *[1] * (weight.dim() - 1)))
                bias.copy_(bias * factor + shift)
            else:  # Gemm: y = alpha * A @ B + beta * C; the output axis of B is 0 when transB
                out_axis = 0 if attrs.get("transB", 0) else 1
                weight.mul_(factor.reshape(-1, 1) if out_axis == 0 else factor.reshape(1, -1))
                beta = float(attrs.get("beta", 1.0))
                bias.copy_((bias.reshape(-1) * factor + shift / beta).reshape(bias.shape))
            nodes[index] = (op_type, ins, [names.layer_output, *outs[1:]], attrs)
            del nodes[index + 1]
            module.batch_statistics.discard(names.layer_output)
            for name in (names.scale, names.bias, names.mean, names.var):
                module.remove_tensor(name)


def unfolded_members(unfolded: list[Unfolded], module) -> dict[str, list[str]]:
    """Layer weight name -> the names of its BN's scale and bias (channel axis 0 of both), so that
    channel penalties can treat them as members of the layer's output channels."""
    by_output = {node[2][0]: node for node in module.graph_nodes}
    return {by_output[names.raw][1][1]: [names.scale, names.bias] for names in unfolded}
