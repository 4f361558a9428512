"""Test model zoo: small, architecturally faithful torch models and an ONNX export helper.

Every model here is a scaled-down version of a well-known architecture (few channels, small
inputs) so that exporting and running it on 2 CPU cores takes well under a second, while the
*graph structure* -- the thing a channel pruner has to understand -- is the real one:
option-A zero-padding shortcuts, projection shortcuts, bottlenecks, depthwise convolutions,
residual Adds, Flatten into Linear, and so on.

Public API
----------
``ZOO``
    ``{name: factory}``; ``factory()`` returns ``(module_in_eval_mode, example_input_shape)``.
    Weights are seeded deterministically and BatchNorm running statistics / affine parameters
    are randomised so that BN is not the identity and no model is degenerate.
``build(name)``
    Shortcut for ``ZOO[name]()``.
``export_onnx(module, input_shape, path, dynamo, *, keep_bn=False)``
    Export with ``torch.onnx.export`` (TorchScript exporter when ``dynamo=False``, the
    ``torch.export``-based exporter when ``dynamo=True``), dynamic batch axis, input name
    ``"input"`` and output name ``"output"``. Returns the path of the ``.onnx`` file.
``ort_matches_torch(module, onnx_path, input_shape, batches=(1, 3), atol=1e-4, rtol=1e-4)``
    Assert ONNX Runtime (CPU) output == torch output at each batch size (``max|diff| <= atol +
    rtol * max|torch|``); returns the max absolute difference.
``randomize_bn(module, seed, input_shape=None)``
    Randomise BN affine parameters and calibrate + jitter running statistics in place (used by
    every factory).

What the two exporters emit with torch 2.13 / onnxscript 0.7 (measured on this zoo)
------------------------------------------------------------------------------------
``dynamo=False`` (TorchScript exporter, opset 17, IR 8):
  * eval-mode BatchNorm is **folded into the preceding Conv**; the fused weights get anonymous
    names such as ``onnx::Conv_275`` (their values differ from the torch parameters). Linear
    weights keep their names (``linear.weight``). ``keep_bn=True`` exports with
    ``training=TrainingMode.PRESERVE`` instead, which keeps ``BatchNormalization`` nodes.
  * single file, all weights are initializers; ``torch.flatten``/``nn.Flatten`` -> ``Flatten``,
    ``AdaptiveAvgPool2d(1)`` -> ``GlobalAveragePool``, ``Linear`` -> ``Gemm(transB=1)``,
    ``ReLU6`` -> ``Clip`` whose min/max come from ``Constant`` nodes.
  * option-A shortcut: two ``Slice`` nodes (step 2 on H, W; starts/ends from ``Constant`` nodes)
    then ``Pad`` whose ``pads`` input is NOT folded: it is computed by a constant chain
    ``Constant -> ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Reshape -> Cast``
    (the same shape as ``../shared/data/cifar10/resnet20.onnx``).
``dynamo=True`` (torch.export + onnxscript optimizer, opset **20**, IR 10):
  * BatchNorm is **also folded** (by the onnxscript optimizer): the Conv weight keeps the torch
    name (``conv1.weight``) but holds the *fused* values, and a new bias initializer
    ``conv1.weight_bias`` is added.
  * tensors larger than 256 bytes (onnx_ir's default threshold) are written as **external
    data** in ``<path>.data`` (location relative to the model file); smaller ones stay inline.
  * ``torch.flatten``/``nn.Flatten`` -> ``Reshape(x, [-1, C*H*W], allowzero=1)`` with a constant
    shape initializer (no ``Flatten``); global average pool -> ``ReduceMean(axes=[-1, -2],
    keepdims=1)`` (negative axes) followed by that ``Reshape``; no ``Constant`` nodes at all:
    constants are initializers named ``val_<n>``; option-A ``Pad`` gets a constant ``pads``
    initializer directly; Slice ends are ``INT64_MAX``.
  * dynamic batch works for every model of the zoo (no static-batch fallback needed).
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "EXPORTERS",
    "ZOO",
    "build",
    "export_onnx",
    "ort_matches_torch",
    "randomize_bn",
    "single_thread",
    "ResNetCifar",
    "ResNet50",
    "VGG16BN",
    "MobileNetV2",
    "FlattenHeadCNN",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored afterwards).

    The zoo models are tiny: extra threads buy nothing, and on a busy 2-core CI machine their
    spin-waiting made the zoo tests ~2.5x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomize_bn(
    module: nn.Module, seed: int = 0, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Give every BatchNorm non-trivial, sane statistics and affine parameters (in place).

    weight ~ U(0.5, 1.5), bias ~ U(-0.2, 0.2). The running statistics are *calibrated*: with
    ``input_shape`` given, a batch of 16 seeded N(0, 1) inputs is run in train mode with
    cumulative averaging, so each BN normalises what actually reaches it and the signal neither
    vanishes nor explodes with depth (random running_var alone makes deep nets' outputs almost
    independent of their input). The calibrated statistics are then jittered (mean + U(-0.1,
    0.1), var x U(0.8, 1.25)) so no BN is an exact whitening either. Without ``input_shape``,
    running_mean ~ U(-0.2, 0.2) and running_var ~ U(0.5, 1.5). Deterministic for a given seed.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        if input_shape is not None:
            momenta = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the calibration batches
            was_training = module.training
            module.train()
            module(torch.randn(16, *input_shape[1:], generator=g))
            module.train(was_training)
            for m, mom in zip(bns, momenta):
                m.momentum = mom
                c = m.num_features
                m.running_mean.add_((torch.rand(c, generator=g) - 0.5) * 0.2)
                m.running_var.mul_(0.8 + 0.45 * torch.rand(c, generator=g))
    return module


def _finish(module: nn.Module, input_shape: tuple[int, ...], seed: int):
    with single_thread():
        randomize_bn(module, seed, input_shape)
    return module.eval(), input_shape


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """``[Conv2d(bias=False), BatchNorm2d]`` with "same" padding for odd ``k``."""
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


# --------------------------------------------------------------------------------------------
# CIFAR ResNet (He et al. 2016, section 4.2): resnet20 with option A or option B shortcuts
# --------------------------------------------------------------------------------------------


class LambdaLayer(nn.Module):
    """Wrap a function as a module (as in the reference CIFAR ResNet implementation)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    """3x3-3x3 residual block. ``option="A"``: parameter-free shortcut (stride-2 subsample and
    zero-pad ``planes//4`` channels on each side); ``option="B"``: 1x1 conv + BN projection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                pad = planes // 4
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0.0)
                )
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"unknown shortcut option {option!r}")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2): conv3x3 stem, three stages of ``n`` BasicBlocks (widths ``w``, 2w,
    4w; stride 2 at the start of stages 2 and 3), global average pool, Linear.
    ``n=3, w=16`` is the paper's ResNet-20; the zoo uses ``w=8`` to stay fast."""

    def __init__(self, n: int = 3, width: int = 16, option: str = "A", num_classes: int = 10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers, in_planes = [], w
        for i, planes in enumerate((w, 2 * w, 4 * w)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride, option))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def resnet20_a():
    """CIFAR ResNet-20 (3 blocks per stage), option-A (zero-pad) shortcuts, widths 8/16/32,
    input 1x3x32x32."""
    torch.manual_seed(0)
    return _finish(ResNetCifar(n=3, width=8, option="A"), (1, 3, 32, 32), 0)


def resnet20_b():
    """CIFAR ResNet-20 with option-B (1x1 conv + BN projection) shortcuts where shape changes,
    widths 8/16/32, input 1x3x32x32."""
    torch.manual_seed(1)
    return _finish(ResNetCifar(n=3, width=8, option="B"), (1, 3, 32, 32), 1)


# --------------------------------------------------------------------------------------------
# ResNet-50 (bottleneck), width multiplier
# --------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """1x1 (reduce) - 3x3 (stride) - 1x1 (expand x4) bottleneck with BN, torchvision v1.5 style
    (stride on the 3x3); downsample = 1x1 conv + BN when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(nn.Module):
    """ResNet-50: 7x7/2 stem + BN + ReLU + 3x3/2 maxpool, stages of (3, 4, 6, 3) bottlenecks
    with base widths (b, 2b, 4b, 8b) and expansion 4, global average pool, Linear.
    ``base=64`` is the real network; the zoo uses ``base=8``."""

    def __init__(self, base: int = 64, layers=(3, 4, 6, 3), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, in_planes = [], base
        for i, n in enumerate(layers):
            planes = base * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_planes, planes, stride))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet50():
    """Bottleneck ResNet-50 (3, 4, 6, 3) with base width 8 (outputs 32..256 channels),
    input 1x3x64x64."""
    torch.manual_seed(2)
    return _finish(ResNet50(base=8), (1, 3, 64, 64), 2)


# --------------------------------------------------------------------------------------------
# VGG-16 with BN
# --------------------------------------------------------------------------------------------

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16-BN: 13 conv3x3+BN+ReLU layers, 5 maxpools, classifier
    Flatten -> Linear -> ReLU -> Linear. Widths are the real ones divided by ``div``."""

    def __init__(self, div: int = 8, hidden: int = 64, num_classes: int = 10, spatial: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = v // div
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        side = spatial // 32
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16_bn():
    """VGG-16-BN at 1/8 width (8..64 channels; conv with bias as in torchvision),
    input 1x3x32x32 (final map 64x1x1), classifier Flatten->Linear(64,64)->ReLU->Linear."""
    torch.manual_seed(3)
    return _finish(VGG16BN(div=8), (1, 3, 32, 32), 3)


# --------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(*conv_bn(cin, cout, k, stride, groups), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x t, skipped when t == 1) + depthwise 3x3 + 1x1 linear
    projection, residual Add when stride 1 and in == out."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(ConvBNReLU6(cin, hidden, 1))
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden), *conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with the standard (t, c, n, s) table, width multiplier
    ``width`` (channels rounded to multiples of 8), last conv ``1280 * max(1, width)`` unless
    ``last`` is given. The stride-2 stem is kept, so a 32x32 input ends at 1x1."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip

    def __init__(self, width: float = 0.25, num_classes: int = 10, last: int | None = None):
        super().__init__()
        cin = _make_divisible(32 * width)
        last = last or _make_divisible(1280 * max(1.0, width))
        feats: list[nn.Module] = [ConvBNReLU6(3, cin, 3, 2)]
        for t, c, n, s in self.CFG:
            cout = _make_divisible(c * width)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(ConvBNReLU6(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2():
    """MobileNetV2 at width 0.35 (stage widths 8/8/16/24/32/56/112, expanded up to 336
    channels; 17 inverted residuals, 10 residual Adds, depthwise convs, ReLU6) with a
    256-channel last conv instead of 1280, input 1x3x32x32."""
    torch.manual_seed(4)
    return _finish(MobileNetV2(width=0.35, last=256), (1, 3, 32, 32), 4)


# --------------------------------------------------------------------------------------------
# CNN with a Flatten head (one channel = a block of H*W features in the Linear)
# --------------------------------------------------------------------------------------------


class FlattenHeadCNN(nn.Module):
    """conv(3->8)+BN+ReLU, maxpool, conv(8->16)+BN+ReLU, maxpool -> [N, 16, 4, 4],
    ``torch.flatten(x, 1)`` -> Linear(256, 32) -> ReLU -> Linear(32, 10). Channel ``c`` of the
    last conv feeds Linear input features ``16*c .. 16*c+15``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def flatten_head_cnn():
    """FlattenHeadCNN, input 1x3x16x16 (feature map [N, 16, 4, 4] before the flatten)."""
    torch.manual_seed(5)
    return _finish(FlattenHeadCNN(), (1, 3, 16, 16), 5)


ZOO: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "resnet20_a": resnet20_a,
    "resnet20_b": resnet20_b,
    "resnet50": resnet50,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2,
    "flatten_head_cnn": flatten_head_cnn,
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """``ZOO[name]()``: a fresh, seeded, eval-mode module and its example input shape."""
    return ZOO[name]()


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

#: exporter names understood by the ``zoo_model`` fixture (tests/conftest.py):
#: "torchscript" = export_onnx(dynamo=False), "torchscript_bn" = the same with keep_bn=True,
#: "dynamo" = export_onnx(dynamo=True).
EXPORTERS = ("torchscript", "torchscript_bn", "dynamo")

# Dynamic batch works with the dynamo exporter for every model here (torch 2.13), so there is no
# static-batch fallback. If a future model needs one, export it with ``dynamic_shapes=None`` and
# list it in a comment here.


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: str | pathlib.Path,
    dynamo: bool,
    *,
    keep_bn: bool = False,
) -> pathlib.Path:
    """Export ``module`` (put in eval mode) to ONNX at ``path`` and return ``path`` as a Path.

    * ``dynamo=False``: TorchScript exporter, opset 17, ``do_constant_folding=True``, input
      ``"input"``, output ``"output"``, batch axis dynamic (``dynamic_axes``). Single file.
      BatchNorm is folded into the convs unless ``keep_bn=True`` (``TrainingMode.PRESERVE``,
      which keeps inference-mode ``BatchNormalization`` nodes).
    * ``dynamo=True``: ``torch.export``-based exporter (needs onnxscript), its default opset (20),
      batch axis dynamic via ``dynamic_shapes`` with a ``torch.export.Dim``; weights are written
      as external data in ``<path>.data`` beside the model. BN is always folded (``keep_bn``
      is not supported).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    x = torch.randn(*input_shape)
    with torch.no_grad(), warnings.catch_warnings(), single_thread():
        warnings.simplefilter("ignore")
        if not dynamo:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=17,
                do_constant_folding=True,
                training=(
                    torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
                ),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        else:
            if keep_bn:
                raise ValueError("keep_bn=True is only supported with dynamo=False")
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
            )
    return path


def ort_matches_torch(
    module: nn.Module,
    onnx_path: str | pathlib.Path,
    input_shape: tuple[int, ...],
    batches: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run ``onnx_path`` with ONNX Runtime (CPU) and ``module`` with torch on the same seeded
    random inputs for each batch size; raise ``AssertionError`` when
    ``max|ort - torch| > atol + rtol * max|torch|``; return the largest absolute difference.

    The ``rtol`` term matters only for the deepest models: plain float32 already puts ResNet-50's
    logits (|y| up to ~2.5) ~4e-5 away from a float64 evaluation, in torch as in ONNX Runtime.
    """
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, *input_shape[1:], generator=g)
        with torch.no_grad(), single_thread():
            ref = module.eval()(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        assert got.shape == ref.shape, f"batch {b}: shape {got.shape} != {ref.shape}"
        err = float(np.abs(got - ref).max())
        tol = atol + rtol * float(np.abs(ref).max())
        assert err <= tol, f"batch {b}: max |ort - torch| = {err:.3g} > {tol:.3g}"
        worst = max(worst, err)
    return worst
