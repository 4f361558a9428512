"""ONNX -> trainable ``torch.nn.Module`` (and back).

``to_torch(model)`` turns an ONNX model (a ``ModelProto`` or a path; the graph is normalized by
``onnxprune.analysis.analyze.load_and_analyze`` first) into an :class:`OnnxModule`: float initializers that
carry weights become ``nn.Parameter``s, the rest (integer tensors, shape constants, scalars,
BatchNormalization running statistics) become buffers. ``module.onnx_parameters`` maps each ONNX
initializer name to its parameter (``module.onnx_tensors`` to its parameter or buffer).
``forward(*inputs)`` evaluates the nodes in topological order through :data:`OPS`, a table
``op_type -> fn(attrs, *tensors) -> tensor | tuple[tensor, ...]`` (a missing optional input is
``None``; ``attrs["_num_outputs"]`` is the node's output count).

``export_onnx(module, example_inputs, path)`` writes it back with the TorchScript exporter
(opset 17, same input / output names, dynamic batch axis).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from onnxprune.analysis.analyze import load_and_analyze
from onnxprune.errors import InputError
from onnxprune.model.nodes import graph_sources, topological_order
from onnxprune.model.tensors import tensor_value
from onnxprune.registry import Registry

Tensor = torch.Tensor
#: ONNX op type -> its torch implementation (registered with `op` below)
OPS: Registry[Callable[..., Any]] = Registry("torch op")


def op(*names: str):
    """Decorator: the torch implementation of the ONNX ops `names`."""
    return OPS.register(*names)


# ------------------------------------------------------------------------------ helpers


def _ints(t) -> list[int]:
    """A 1-D int tensor / sequence as a Python int list."""
    if t is None:
        return []
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _pair_pads(pads: Sequence[int], n: int) -> tuple[list[int], list[int]]:
    pads = list(pads) if pads else [0] * (2 * n)
    return pads[:n], pads[n:]


def _fpad(pads_begin: Sequence[int], pads_end: Sequence[int]) -> list[int]:
    """ONNX begin/end pads over the trailing spatial axes -> F.pad order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(list(pads_begin)), reversed(list(pads_end))):
        out += [int(b), int(e)]
    return out


def _check_auto_pad(attrs, op_type):
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        raise InputError(f"no torch translation for op {op_type} with auto_pad={auto}")


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


# ------------------------------------------------------------------------------ conv / pool


@op("Conv")
def _conv(a, x, w, b=None):
    _check_auto_pad(a, "Conv")
    n = x.dim() - 2
    pb, pe = _pair_pads(a.get("pads"), n)
    stride = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    if pb == pe:
        return _CONV[n](x, w, b, stride, pb, dil, a.get("group", 1))
    return _CONV[n](F.pad(x, _fpad(pb, pe)), w, b, stride, 0, dil, a.get("group", 1))


@op("ConvTranspose")
def _conv_transpose(a, x, w, b=None):
    _check_auto_pad(a, "ConvTranspose")
    if "output_shape" in a:
        raise InputError("no torch translation for op ConvTranspose with output_shape")
    n = x.dim() - 2
    pb, pe = _pair_pads(a.get("pads"), n)
    stride = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    outpad = a.get("output_padding", [0] * n)
    y = _CONVT[n](x, w, b, stride, 0, outpad, a.get("group", 1), dil)
    if any(pb) or any(pe):
        idx = [slice(None), slice(None)] + [slice(p, y.shape[2 + i] - e) for i, (p, e) in enumerate(zip(pb, pe))]
        y = y[tuple(idx)]
    return y


@op("MaxPool")
def _maxpool(a, x):
    _check_auto_pad(a, "MaxPool")
    if a.get("_num_outputs", 1) > 1:
        raise InputError("no torch translation for op MaxPool with Indices output")
    k = a["kernel_shape"]
    n = len(k)
    pb, pe = _pair_pads(a.get("pads"), n)
    stride = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    ceil = bool(a.get("ceil_mode", 0))
    if pb != pe:
        x = F.pad(x, _fpad(pb, pe), value=-math.inf)
        pb = [0] * n
    return _MAXPOOL[n](x, k, stride, pb, dil, ceil_mode=ceil)


@op("AveragePool")
def _avgpool(a, x):
    _check_auto_pad(a, "AveragePool")
    k = a["kernel_shape"]
    n = len(k)
    pb, pe = _pair_pads(a.get("pads"), n)
    stride = a.get("strides", [1] * n)
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))
    if any(d != 1 for d in a.get("dilations", [1] * n)):
        raise InputError("no torch translation for op AveragePool with dilations")
    if pb != pe:
        if not include:
            raise InputError("no torch translation for op AveragePool with asymmetric pads and count_include_pad=0")
        x = F.pad(x, _fpad(pb, pe))
        pb = [0] * n
    if any(2 * p > kk for p, kk in zip(pb, k)):  # torch limits pad to half the kernel
        if not include:
            raise InputError("no torch translation for op AveragePool with pads > kernel/2")
        x = F.pad(x, _fpad(pb, pb))
        pb = [0] * n
    return _AVGPOOL[n](x, k, stride, pb, ceil_mode=ceil, count_include_pad=include)


@op("GlobalAveragePool")
def _gap(a, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(a, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("BatchNormalization")
def _bn(a, x, scale, bias, mean, var):
    if a.get("training_mode", 0):
        raise InputError("no torch translation for op BatchNormalization in training mode")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def batch_norm_training(a, x, scale, bias, mean, var):
    """BatchNormalization in training mode: normalize with the batch's statistics (over every axis
    but 1; summed over the ranks of a ``torch.distributed`` process group, so data-parallel runs
    normalize like one process) and update the running statistics in place with the node's
    ``momentum`` (ONNX convention: running = momentum * running + (1 - momentum) * batch)."""
    dims = [d for d in range(x.dim()) if d != 1]
    count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=x.dtype)
    moments = torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            import torch.distributed.nn.functional as dist_nn

            moments = dist_nn.all_reduce(moments)
    channels = x.shape[1]
    total = moments[-1]
    batch_mean = moments[:channels] / total
    batch_var = (moments[channels : 2 * channels] / total - batch_mean * batch_mean).clamp_min(0.0)
    momentum = float(a.get("momentum", 0.9))
    with torch.no_grad():
        mean.mul_(momentum).add_((1 - momentum) * batch_mean.detach())
        unbiased = batch_var.detach() * total / (total - 1).clamp_min(1.0)
        var.mul_(momentum).add_((1 - momentum) * unbiased)
    shape = [1, channels] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(batch_var + a.get("epsilon", 1e-5)).reshape(shape)
    return (x - batch_mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


@op("LayerNormalization")
def _layernorm(a, x, scale, bias=None):
    axis = a.get("axis", -1) % x.dim()
    if a.get("_num_outputs", 1) > 1:
        raise InputError("no torch translation for op LayerNormalization with Mean/InvStdDev outputs")
    return F.layer_norm(x, [int(d) for d in x.shape[axis:]], scale, bias, a.get("epsilon", 1e-5))


# ------------------------------------------------------------------------------ activations

op("Relu")(lambda a, x: F.relu(x))
op("LeakyRelu")(lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)))
op("Sigmoid")(lambda a, x: torch.sigmoid(x))
op("Tanh")(lambda a, x: torch.tanh(x))
op("HardSigmoid")(lambda a, x: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0))
op("HardSwish")(lambda a, x: F.hardswish(x))
op("Erf")(lambda a, x: torch.erf(x))
op("Gelu")(lambda a, x: F.gelu(x, approximate=a.get("approximate", "none")))
op("Sqrt")(lambda a, x: torch.sqrt(x))
op("Exp")(lambda a, x: torch.exp(x))
op("Neg")(lambda a, x: -x)
op("Identity")(lambda a, x: x)
op("Softmax")(lambda a, x: torch.softmax(x, a.get("axis", -1)))


@op("Clip")
def _clip(a, x, lo=None, hi=None):
    lo = a.get("min") if lo is None else lo
    hi = a.get("max") if hi is None else hi
    if lo is not None and hi is not None:
        return torch.clamp(x, lo, hi)
    if lo is not None:
        return torch.clamp(x, min=lo)
    if hi is not None:
        return torch.clamp(x, max=hi)
    return x


@op("Dropout")
def _dropout(a, x, ratio=None, training=None):
    if a.get("_num_outputs", 1) > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


# ------------------------------------------------------------------------------ arithmetic

op("Add")(lambda a, x, y: x + y)
op("Sub")(lambda a, x, y: x - y)
op("Mul")(lambda a, x, y: x * y)
op("Pow")(lambda a, x, y: torch.pow(x, y))
op("MatMul")(lambda a, x, y: torch.matmul(x, y))


@op("Div")
def _div(a, x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@op("Gemm")
def _gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.transpose(0, 1)
    if a.get("transB", 0):
        w = w.transpose(0, 1)
    y = x @ w
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


@op("ReduceMean")
def _reduce_mean(a, x, axes=None):
    axes = _ints(axes) if axes is not None else list(a.get("axes", []))
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return x.mean(dim=tuple(axes), keepdim=keep)


# ------------------------------------------------------------------------------ shape ops


@op("Flatten")
def _flatten(a, x):
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    if axis == 0:
        return x.reshape(1, -1)
    y = x.flatten(axis) if axis < x.dim() else x.unsqueeze(-1)
    return y.flatten(0, axis - 1)


@op("Reshape")
def _reshape(a, x, shape):
    vals = _ints(shape)
    zero_copies = not a.get("allowzero", 0)
    if torch.jit.is_tracing():  # keep a computed (Shape -> ...) target dynamic in the trace
        dims: list[Any] = [
            x.shape[i] if (v == 0 and zero_copies) else (-1 if v == -1 else d)
            for i, (v, d) in enumerate(zip(vals, shape.reshape(-1).unbind(0)))
        ]
    else:
        dims = [x.shape[i] if (v == 0 and zero_copies) else v for i, v in enumerate(vals)]
    return x.reshape(dims)


@op("Transpose")
def _transpose(a, x):
    perm = a.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@op("Concat")
def _concat(a, *xs):
    return torch.cat([t for t in xs if t is not None], dim=a["axis"])


@op("Split")
def _split(a, x, split=None):
    axis = a.get("axis", 0)
    n_out = a.get("_num_outputs", 1)
    sizes = _ints(split) if split is not None else list(a.get("split", []))
    if not sizes:
        dim = x.shape[axis]
        n = a.get("num_outputs", n_out)
        chunk = -(-int(dim) // n)
        sizes = [chunk] * (n - 1) + [int(dim) - chunk * (n - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def _slice(a, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        if st > 0:
            idx[ax] = slice(s, e, st)
        else:  # negative step: clamp like ONNX, then flip
            dim = int(x.shape[ax])
            s = min(max(s + dim if s < 0 else s, -1), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            idx[ax] = slice(e + 1, s + 1)
            flips.append((ax, -st))
    y = x[tuple(idx)]
    for ax, st in flips:
        y = y.flip(ax)
        if st != 1:
            y = y[(slice(None),) * ax + (slice(None, None, st),)]
    return y


@op("Pad")
def _pad(a, x, pads=None, value=None, axes=None):
    mode = a.get("mode", "constant")
    if mode != "constant":
        raise InputError(f"no torch translation for op Pad with mode={mode}")
    pads = _ints(pads) if pads is not None else list(a.get("pads", []))
    axes = _ints(axes) if axes is not None else list(range(x.dim()))
    n = len(axes)
    begin, end = [0] * x.dim(), [0] * x.dim()
    for i, ax in enumerate(axes):
        begin[ax % x.dim()], end[ax % x.dim()] = pads[i], pads[n + i]
    v = float(value.reshape(-1)[0]) if value is not None and value.numel() else float(a.get("value", 0.0))
    return F.pad(x, _fpad(begin, end), value=v)


@op("Shape")
def _shape(a, x):
    s = torch._shape_as_tensor(x)
    start, end = a.get("start", 0), a.get("end")
    return s[start:end] if (start or end is not None) else s


@op("Gather")
def _gather(a, x, idx):
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


@op("Unsqueeze")
def _unsqueeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else list(a["axes"])
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Squeeze")
def _squeeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else list(a.get("axes", []))
    if not axes:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Cast")
def _cast(a, x):
    return x.to(_DTYPES[a["to"]])


@op("ConstantOfShape")
def _constant_of_shape(a, shape):
    value = a.get("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)


@op("Constant")
def _constant(a):
    if "value" in a:
        return a["value"]
    for key, dtype in (
        ("value_float", torch.float32),
        ("value_floats", torch.float32),
        ("value_int", torch.int64),
        ("value_ints", torch.int64),
    ):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise InputError("no torch translation for op Constant with this value attribute")


@op("Resize")
def _resize(a, x, roi=None, scales=None, sizes=None):
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    n = x.dim() - 2
    if sizes is not None and sizes.numel():
        size = _ints(sizes)
        if size[:2] != list(x.shape[:2]):
            raise InputError("no torch translation for op Resize over batch/channel axes")
        kw: dict[str, Any] = {"size": size[2:]}
    elif scales is not None and scales.numel():
        sc = [float(s) for s in scales.reshape(-1).tolist()]
        if sc[:2] != [1.0, 1.0]:
            raise InputError("no torch translation for op Resize over batch/channel axes")
        kw = {"scale_factor": sc[2:], "recompute_scale_factor": False}
    else:
        raise InputError("no torch translation for op Resize without scales or sizes")
    if mode == "nearest":
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nearest == "floor":
            return F.interpolate(x, mode="nearest", **kw)
        if ctm == "half_pixel" and nearest == "round_prefer_ceil":  # floor((i + 0.5) / scale)
            return F.interpolate(x, mode="nearest-exact", **kw)
        raise InputError(f"no torch translation for op Resize nearest with {ctm}/{nearest}")
    if mode == "linear":
        lin = {1: "linear", 2: "bilinear", 3: "trilinear"}[n]
        if ctm == "align_corners":
            return F.interpolate(x, mode=lin, align_corners=True, **kw)
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, mode=lin, align_corners=False, **kw)
        raise InputError(f"no torch translation for op Resize linear with {ctm}")
    raise InputError(f"no torch translation for op Resize with mode={mode}")


# ------------------------------------------------------------------------------ module


def _attr_value(attr: onnx.AttributeProto):
    v = helper.get_attribute_value(attr)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return torch.from_numpy(np.array(numpy_helper.to_array(v)))
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


#: (op_type, input index) slots whose float initializer is never trainable (statistics, shape /
#: scale / bound operands): always a buffer. Other float initializers are parameters when they
#: hold more than one element (scalars stay buffers).
_BUFFER_SLOTS = {
    ("BatchNormalization", 3),
    ("BatchNormalization", 4),
    ("Resize", 1),
    ("Resize", 2),
    ("Resize", 3),
    ("Pad", 1),
    ("Pad", 2),
    ("Clip", 1),
    ("Clip", 2),
    ("Pow", 1),
    ("Dropout", 1),
}


def _topo_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    try:
        return topological_order(list(graph.node), graph_sources(graph))
    except ValueError as exc:
        raise InputError(f"graph is not a DAG or has undefined inputs: {exc}") from None


class OnnxModule(nn.Module):
    """A torch module evaluating an ONNX graph; see the module docstring."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        self.params = nn.ParameterDict()
        self._keys: dict[str, tuple[str, str]] = {}  # onnx name -> ("param"|"buffer", key)
        #: outputs of BatchNormalization nodes that normalize with batch statistics in training
        #: mode (`batch_norm_training`); the others always use their running statistics
        self.batch_statistics: set[str] = set()
        used: set[str] = set()

        buffer_only = set()
        for node in graph.node:
            for i, name in enumerate(node.input):
                if (node.op_type, i) in _BUFFER_SLOTS:
                    buffer_only.add(name)

        self._used = used
        for name, tensor in inits.items():
            value = torch.from_numpy(np.array(tensor_value(tensor)))
            self.add_tensor(name, value, value.is_floating_point() and value.numel() > 1 and name not in buffer_only)

        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for node in _topo_order(graph):
            if node.op_type not in OPS or node.domain not in ("", "ai.onnx"):
                raise InputError(f"no torch translation for op {node.op_type}")
            attrs = {a.name: _attr_value(a) for a in node.attribute}
            attrs["_num_outputs"] = len(node.output)
            if node.op_type == "Constant":  # fold into a buffer now
                value = OPS["Constant"](attrs)
                key = self._key_for(node.output[0])
                self.register_buffer("c_" + key, value)
                self._keys[node.output[0]] = ("buffer", "c_" + key)
                continue
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))

    def _key_for(self, name: str) -> str:
        key = re.sub(r"\W", "_", name) or "t"
        if key[0].isdigit():
            key = "t_" + key
        base, k = key, 1
        while key in self._used:
            k += 1
            key = f"{base}_{k}"
        self._used.add(key)
        return key

    @property
    def graph_nodes(self) -> list[tuple[str, list[str], list[str], dict[str, Any]]]:
        """The nodes ``forward`` evaluates, in order, as (op_type, inputs, outputs, attributes);
        the list itself, so that passes (e.g. unfolding BatchNormalization) can edit the graph."""
        return self._nodes

    def add_tensor(self, name: str, value: Tensor, trainable: bool) -> Tensor:
        """Add the ONNX tensor `name` (a parameter when `trainable`, else a buffer); returns it."""
        if name in self._keys:
            raise ValueError(f"tensor {name!r} already exists")
        key = self._key_for(name)
        if trainable:
            self.params[key] = nn.Parameter(value)
            self._keys[name] = ("param", key)
            return self.params[key]
        self.register_buffer("c_" + key, value)
        self._keys[name] = ("buffer", "c_" + key)
        return getattr(self, "c_" + key)

    def remove_tensor(self, name: str) -> None:
        """Drop the ONNX tensor `name` (no node may read it any more)."""
        kind, key = self._keys.pop(name)
        if kind == "param":
            del self.params[key]
        else:
            delattr(self, key)
        self._used.discard(key.removeprefix("c_") if kind == "buffer" else key)

    @property
    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """ONNX initializer name -> its ``nn.Parameter`` (trainable initializers only)."""
        return {n: self.params[k] for n, (kind, k) in self._keys.items() if kind == "param"}

    @property
    def onnx_tensors(self) -> dict[str, Tensor]:
        """ONNX initializer (or folded Constant) name -> its parameter or buffer."""
        return {n: (self.params[k] if kind == "param" else getattr(self, k)) for n, (kind, k) in self._keys.items()}

    def forward(self, *inputs: Tensor):
        if len(inputs) != len(self.input_names):
            raise InputError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env: dict[str, Tensor] = dict(self.onnx_tensors)
        env.update(zip(self.input_names, inputs))
        for op_type, ins, outs, attrs in self._nodes:
            args = [env[name] if name else None for name in ins]
            if self.training and outs[0] in self.batch_statistics:
                result = batch_norm_training(attrs, *args)
            else:
                result = OPS[op_type](attrs, *args)
            if isinstance(result, (tuple, list)):
                for name, value in zip(outs, result):
                    if name:
                        env[name] = value
            else:
                env[outs[0]] = result
        out = [env[name] for name in self.output_names]
        return out[0] if len(out) == 1 else tuple(out)


def to_torch(model: onnx.ModelProto | str | os.PathLike) -> OnnxModule:
    """An ONNX model (``ModelProto`` or path), normalized by onnxprune, as a trainable module."""
    return OnnxModule(load_and_analyze(model).model)


def export_onnx(module: nn.Module, example_inputs, path: str | os.PathLike) -> str:
    """Export ``module`` to ONNX (TorchScript exporter, opset 17, dynamic batch axis) keeping
    an :class:`OnnxModule`'s input / output names."""
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    in_names = list(getattr(module, "input_names", [f"input_{i}" for i in range(len(example_inputs))]))
    out_names = getattr(module, "output_names", None)
    if out_names is None:
        with torch.no_grad():
            out = module(*example_inputs)
        n = len(out) if isinstance(out, (tuple, list)) else 1
        out_names = [f"output_{i}" for i in range(n)]
    dynamic = {name: {0: "batch"} for name in list(in_names) + list(out_names)}
    was_training = module.training
    module.eval()
    try:
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=in_names,
            output_names=list(out_names),
            dynamic_axes=dynamic,
        )
    finally:
        module.train(was_training)
    return str(path)
