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
``TOPOLOGY_ZOO``
    Same interface, multi-branch / non-sequential architectures (DenseNet, Inception,
    SqueezeNet, MobileNetV3/EfficientNet, RegNet, U-Net, YOLOv8, ConvNeXt, ShuffleNetV2). Kept
    out of ``ZOO`` because tests over ``ZOO`` assume plain CNNs (e.g. every BN folded away).
``ALL_MODELS``
    ``{**ZOO, **TOPOLOGY_ZOO}``; the ``zoo_model`` fixture serves every name in it.
``build(name)``
    Shortcut for ``ALL_MODELS[name]()``.
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

``TOPOLOGY_ZOO`` (all nine export with all three exporters, dynamic batch, ORT == torch):
  * ``chunk(2, 1)`` (C2f, ShuffleNetV2 split): TorchScript -> two ``Slice`` nodes on axis 1
    whose starts/ends are *computed* (``Shape -> Gather(1) -> Add 1 -> Div 2 -> Mul k``);
    dynamo -> one ``Split(axis=1, num_outputs=2)``.
  * channel shuffle ``view -> transpose(1, 2) -> view``: ``Reshape -> Transpose(perm=[0, 2, 1,
    3, 4]) -> Reshape`` in both; dynamo's shapes are constant initializers
    (``[-1, 2, C/2, H, W]`` then ``[-1, C, H, W]``, allowzero=1), TorchScript's are built at run
    time from ``Shape``/``Gather``/``Div``/``Cast``/``Unsqueeze``/``Concat`` (the second one
    from the Shape of the pre-shuffle tensor). YOLO's ``view(N, 20, -1)`` likewise:
    ``Concat(Unsqueeze(Shape[0]), 20, -1)`` vs a constant ``[-1, 20, 64]``.
  * ``nn.Upsample``: ``Resize`` with constant ``scales`` ``[1, 1, 2, 2]`` (empty roi) in both;
    bilinear -> ``mode="linear"``, ``align_corners``; nearest -> ``asymmetric``/``floor``.
  * ``Hardsigmoid`` / ``Hardswish`` -> ``HardSigmoid`` / ``HardSwish`` nodes; ``SiLU`` ->
    ``Sigmoid`` + ``Mul``; SE pooling -> ``GlobalAveragePool`` (TorchScript) or ``ReduceMean``
    (dynamo); the gate is a broadcast ``Mul(x, [N, C, 1, 1])``.
  * ``nn.LayerNorm`` -> ``LayerNormalization`` in both; the hand-written channels-first LN
    stays ``ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add``; ``Linear`` on a 4-D
    channels-last tensor -> ``MatMul`` + ``Add``; ``permute`` -> ``Transpose``; ``GELU`` ->
    ``Div/Erf/Add/Mul/Mul`` at opset 17, a ``Gelu`` node at opset 20.
  * BN after a Concat (DenseNet pre-activation) cannot be folded: 8 ``BatchNormalization``
    nodes remain in both the TorchScript and the dynamo export.
  * ``torch.cat`` of a single tensor (torchvision DenseNet's first layer) is a 1-input
    ``Concat`` in TorchScript and disappears with dynamo.
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ALL_MODELS",
    "EXPORTERS",
    "TOPOLOGY_ZOO",
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


def randomize_bn(module: nn.Module, seed: int = 0, input_shape: tuple[int, ...] | None = None) -> nn.Module:
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
                self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0.0))
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
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

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


# ============================================================================================
# TOPOLOGY_ZOO: multi-branch / non-sequential architectures
# ============================================================================================
#
# These models are kept out of ``ZOO`` on purpose: tests that parametrize over ``ZOO`` assert
# things that only hold for plain CNNs (every BN folded, a Linear/Gemm classifier, ...). Each one
# scales a real architecture down to a few thousand to ~100k parameters and a <= 1x3x32x32 input
# while keeping its characteristic graph pattern: concatenations (dense, inception, fire,
# C2f/SPPF, U-Net skips), channel split + shuffle, squeeze-excitation gating (Mul by a
# broadcast [N, C, 1, 1] tensor), grouped convolutions, transposed convolutions and
# interpolation, channels-last LayerNorm / Linear blocks.


def _randomize_ln_and_scales(module: nn.Module, seed: int) -> nn.Module:
    """Give LayerNorm affine parameters and ConvNeXt layer-scale ``gamma`` non-trivial values
    (in place): weight ~ U(0.5, 1.5), bias ~ U(-0.2, 0.2), gamma ~ U(0.1, 1.0) (the paper
    initialises gamma to 1e-6, which would make every block the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                p.copy_(0.1 + 0.9 * torch.rand(p.shape, generator=g))
        for m in module.modules():
            if isinstance(m, (nn.LayerNorm, ChannelsFirstLayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.4)
    return module


# --------------------------------------------------------------------------------------------
# DenseNet-BC (Huang et al. 2017)
# --------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-Conv1x1(bn_size*growth)-BN-ReLU-Conv3x3(growth), pre-activation
    (so the BNs follow a Concat, not a Conv, and cannot be folded into one)."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """``n`` DenseLayers. ``style="classic"``: ``x = torch.cat([x, layer(x)], 1)`` after each
    layer (a chain of 2-input Concats); ``style="list"``: torchvision's form, each layer reads
    ``torch.cat(features, 1)`` of *all* earlier outputs (k-input Concats, one per layer, all
    sharing the block input)."""

    def __init__(self, cin: int, n: int, growth: int, style: str = "classic"):
        super().__init__()
        if style not in ("classic", "list"):
            raise ValueError(f"unknown dense block style {style!r}")
        self.style = style
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))
        self.out_channels = cin + n * growth

    def forward(self, x):
        if self.style == "classic":
            for layer in self.layers:
                x = torch.cat([x, layer(x)], 1)
            return x
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """DenseNet transition: BN-ReLU-Conv1x1 (compression) - AvgPool 2x2."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )  # fmt: skip


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC: conv3x3 stem (16), dense block (3 layers, growth 8, classic concat)
    16->40, transition (compression 0.5) 40->20 + avgpool, dense block (3 layers, torchvision
    list concat) 20->44, final BN-ReLU, global average pool, Linear."""

    def __init__(self, growth: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(2 * growth, 3, growth, "classic")
        c = self.block1.out_channels
        self.trans1 = Transition(c, c // 2)
        self.block2 = DenseBlock(c // 2, 3, growth, "list")
        c = self.block2.out_channels
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.relu(self.norm5(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def densenet():
    """DenseNet-BC: dense connectivity by channel Concat (each layer's 8 new channels appended
    to everything before it; both the chained ``cat([x, new])`` and torchvision's
    ``cat(features)`` forms), pre-activation BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 layers whose first
    BN normalises a concatenation, and a compressing transition (BN-ReLU-Conv1x1-AvgPool).
    Input 1x3x32x32."""
    torch.manual_seed(10)
    module = DenseNet()
    nn.init.zeros_(module.classifier.bias)  # as torchvision's DenseNet init
    return _finish(module, (1, 3, 32, 32), 10)


# --------------------------------------------------------------------------------------------
# Inception (GoogLeNet v1 module + Inception-v3 "InceptionA" module)
# --------------------------------------------------------------------------------------------


class BasicConv2d(nn.Sequential):
    """Conv (no bias) + BN + ReLU, as torchvision's Inception ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(*conv_bn(cin, cout, k, stride), nn.ReLU(inplace=True))


class InceptionV1(nn.Module):
    """GoogLeNet module: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool3x3/1->1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1), BasicConv2d(c3r, c3, 3))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1), BasicConv2d(c5r, c5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicConv2d(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x):
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class InceptionA(nn.Module):
    """Inception-v3 ``InceptionA``: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 (double 3x3) |
    avgpool3x3/1->1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c5r: int, c5: int, cdr: int, cd: int, cp: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c1, 1)
        self.branch5x5 = nn.Sequential(BasicConv2d(cin, c5r, 1), BasicConv2d(c5r, c5, 5))
        self.branch3x3dbl = nn.Sequential(BasicConv2d(cin, cdr, 1), BasicConv2d(cdr, cd, 3), BasicConv2d(cd, cd, 3))
        self.branch_pool = BasicConv2d(cin, cp, 1)
        self.out_channels = c1 + c5 + cd + cp

    def forward(self, x):
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        branches = [self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x), pool]
        return torch.cat(branches, 1)


class InceptionNet(nn.Module):
    """conv3x3 stem (16) + maxpool/2, GoogLeNet module (8 | 8->12 | 4->6 | pool->6 = 32),
    maxpool/2, Inception-v3 A module (8 | 6->8 | 8->12->12 | pool->4 = 32), global average
    pool, dropout, Linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = BasicConv2d(3, 16, 3)
        self.inc1 = InceptionV1(16, 8, 8, 12, 4, 6, 6)
        self.inc2 = InceptionA(self.inc1.out_channels, 8, 6, 8, 8, 12, 4)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(self.inc2.out_channels, num_classes)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        x = F.max_pool2d(self.inc1(x), 3, 2, 1)
        x = self.inc2(x)
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def inception():
    """Inception: parallel branches of different receptive fields concatenated on channels --
    a GoogLeNet module (1x1, 1x1->3x3, 1x1->5x5, maxpool->1x1) and an Inception-v3 A module
    (1x1, 1x1->5x5, 1x1->double 3x3, avgpool->1x1); several 1x1 convs read the same tensor.
    Input 1x3x32x32."""
    torch.manual_seed(11)
    return _finish(InceptionNet(), (1, 3, 32, 32), 11)


# --------------------------------------------------------------------------------------------
# SqueezeNet 1.1 (Iandola et al. 2016)
# --------------------------------------------------------------------------------------------


class Fire(nn.Module):
    """Fire module: squeeze 1x1 + ReLU, then expand 1x1 + ReLU and expand 3x3 + ReLU on the
    same squeezed tensor, concatenated."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 layout at 1/4 width: conv3x3/2 (no padding) + ReLU, ceil-mode maxpools,
    fire modules (16->4->8+8, 16->4->8+8, 16->8->16+16, 32->8->16+16), classifier
    Dropout -> conv1x1 (bias) -> ReLU -> global average pool -> flatten. No BatchNorm, biases
    everywhere, as in the original."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8, 8), Fire(16, 4, 8, 8),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 8, 16, 16), Fire(32, 8, 16, 16),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(32, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet_fire():
    """SqueezeNet 1.1 fire modules: a 1x1 squeeze conv feeding two expand convs (1x1 and 3x3)
    whose outputs are concatenated; fires chained back to back (Concat -> squeeze conv), bias
    convs without BN, ceil-mode maxpools, conv classifier. Input 1x3x32x32."""
    torch.manual_seed(12)
    module = SqueezeNet()
    # torchvision's init (kaiming_uniform_) instead of PyTorch's default: without BN the
    # default init shrinks the signal ~2x per conv and the logits barely depend on the input.
    # Biases get small random values rather than torchvision's zeros.
    g = torch.Generator().manual_seed(12)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=g)
            nn.init.uniform_(m.bias, -0.05, 0.05, generator=g)
    return _finish(module, (1, 3, 32, 32), 12)


# --------------------------------------------------------------------------------------------
# MobileNetV3 / EfficientNet blocks (inverted residual + squeeze-excitation)
# --------------------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation``: AdaptiveAvgPool(1) -> 1x1 conv (bias) -> act ->
    1x1 conv (bias) -> scale act, then ``x * scale`` (broadcast over H, W)."""

    def __init__(self, c: int, squeeze: int, act: type[nn.Module], scale_act: type[nn.Module]):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.act = act()
        self.scale_act = scale_act()

    def forward(self, x):
        scale = self.scale_act(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual with optional SE: [1x1 expand + BN + act] (skipped when exp == cin),
    kxk depthwise + BN + act, [SE], 1x1 project + BN (linear), residual when stride 1 and
    cin == cout. ``kind="mnv3"``: SE squeeze = make_divisible(exp/4), ReLU inside the SE,
    Hardsigmoid gate; ``kind="efficientnet"``: SE squeeze = cin/4, SiLU inside, Sigmoid gate."""

    def __init__(self, cin, k, exp, cout, se, act, stride, kind="mnv3"):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [*conv_bn(cin, exp, 1), act()]
        layers += [*conv_bn(exp, exp, k, stride, groups=exp), act()]
        if se:
            if kind == "mnv3":
                layers.append(SqueezeExcitation(exp, _make_divisible(exp / 4), nn.ReLU, nn.Hardsigmoid))
            else:
                layers.append(SqueezeExcitation(exp, max(1, cin // 4), nn.SiLU, nn.Sigmoid))
        layers += conv_bn(exp, cout, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3Tiny(nn.Module):
    """MobileNetV3-Small-like: conv3x3/2 + BN + Hardswish stem (8), bneck rows
    (cin, k, exp, cout, SE, act, stride) below, then an EfficientNet MBConv (expand 4, SiLU,
    SE with Sigmoid), last 1x1 conv + BN + Hardswish (64), global pool, classifier
    Linear -> Hardswish -> Dropout -> Linear."""

    CFG = [
        (8, 3, 8, 8, True, nn.ReLU, 2),  # expansion 1: no expand conv, SE on the depthwise
        (8, 3, 24, 12, False, nn.ReLU, 1),
        (12, 3, 36, 12, False, nn.ReLU, 1),  # residual
        (12, 5, 48, 16, True, nn.Hardswish, 2),
        (16, 5, 64, 16, True, nn.Hardswish, 1),  # residual + SE
    ]

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, 8, 3, 2), nn.Hardswish()]
        for cin, k, exp, cout, se, act, s in self.CFG:
            layers.append(MBConv(cin, k, exp, cout, se, act, s, "mnv3"))
        layers.append(MBConv(16, 3, 64, 16, True, nn.SiLU, 1, "efficientnet"))
        layers += [*conv_bn(16, 64, 1), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(64, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_block():
    """MobileNetV3 / EfficientNet inverted residuals: 1x1 expansion, depthwise 3x3/5x5,
    squeeze-excitation (global pool -> 1x1 -> ReLU/SiLU -> 1x1 -> Hardsigmoid/Sigmoid, then
    ``x * se``: a Mul whose second input is computed from the first), Hardswish and SiLU
    activations, residual Adds, expansion-1 block without an expand conv. Input 1x3x32x32."""
    torch.manual_seed(13)
    return _finish(MobileNetV3Tiny(), (1, 3, 32, 32), 13)


# --------------------------------------------------------------------------------------------
# RegNet (Radosavovic et al. 2020): X block, Y (SE) block in the last stage
# --------------------------------------------------------------------------------------------


class RegNetBlock(nn.Module):
    """``ResBottleneckBlock`` with bottleneck ratio 1: 1x1 + BN + ReLU, 3x3 grouped conv
    (group width ``gw``, stride) + BN + ReLU, [SE: pool -> 1x1 -> ReLU -> 1x1 -> Sigmoid,
    squeeze = cin/4 (RegNetY)], 1x1 + BN; projection shortcut (1x1/stride + BN) when the shape
    changes; Add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, gw: int = 8, se: bool = False):
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(cin, cout, 1), nn.ReLU(inplace=True)]
        layers += [*conv_bn(cout, cout, 3, stride, groups=cout // gw), nn.ReLU(inplace=True)]
        if se:
            layers.append(SqueezeExcitation(cout, max(1, cin // 4), nn.ReLU, nn.Sigmoid))
        layers += conv_bn(cout, cout, 1)
        self.f = nn.Sequential(*layers)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return F.relu(shortcut + self.f(x))


class RegNetTiny(nn.Module):
    """RegNet: conv3x3/2 + BN + ReLU stem (16), stages of widths (16, 32, 64), depths
    (1, 2, 2), group width 8 (2, 4, 8 groups), stride 2 at each stage start, SE in the last
    stage (RegNetY-style), global average pool, Linear."""

    def __init__(self, widths=(16, 32, 64), depths=(1, 2, 2), gw: int = 8, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, widths[0], 3, 2), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                blocks.append(RegNetBlock(cin, w, 2 if j == 0 else 1, gw, se=i == 2))
                cin = w
        self.trunk = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.trunk(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def regnet_block():
    """RegNetX/Y bottlenecks: grouped 3x3 convs with a fixed group width of 8 channels (so
    channels can only be removed consistently inside groups), projection and identity
    residuals, SE on a grouped conv's output in the last stage. Input 1x3x32x32."""
    torch.manual_seed(14)
    return _finish(RegNetTiny(), (1, 3, 32, 32), 14)


# --------------------------------------------------------------------------------------------
# U-Net (Ronneberger et al. 2015)
# --------------------------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    """(conv3x3 + BN + ReLU) x 2."""

    def __init__(self, cin: int, cout: int, mid: int | None = None):
        mid = mid or cout
        super().__init__(
            *conv_bn(cin, mid, 3), nn.ReLU(inplace=True), *conv_bn(mid, cout, 3),
            nn.ReLU(inplace=True),
        )  # fmt: skip


class UNetTiny(nn.Module):
    """U-Net with 2 down / 2 up levels: DoubleConv 3->8 (32x32), maxpool, 8->16 (16x16),
    maxpool, 16->32 bottleneck (8x8); up 1: ConvTranspose2d(32, 16, 2, 2) -> Concat with the
    16x16 skip -> DoubleConv 32->16; up 2: bilinear ``nn.Upsample(x2, align_corners=True)``
    (milesial/Pytorch-UNet's "bilinear" variant) -> Concat with the 32x32 skip -> DoubleConv
    24->8; 1x1 output conv (bias) -> [N, classes, 32, 32]."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.inc = DoubleConv(3, 8)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 16))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(16, 32))
        self.up1 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.conv_up1 = DoubleConv(32, 16)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv_up2 = DoubleConv(16 + 8, 8)
        self.outc = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        y = self.conv_up1(torch.cat([x2, self.up1(x3)], 1))
        y = self.conv_up2(torch.cat([x1, self.up2(y)], 1))
        return self.outc(y)


def unet():
    """U-Net: encoder features re-used by skip Concats in the decoder (skip first, upsampled
    second, as in the reference code), learned upsampling (ConvTranspose2d 2x2/2) in one level
    and bilinear interpolation in the other, per-pixel 1x1 output conv; output
    [N, 3, 32, 32]. Input 1x3x32x32."""
    torch.manual_seed(15)
    return _finish(UNetTiny(), (1, 3, 32, 32), 15)


# --------------------------------------------------------------------------------------------
# YOLOv8 (Ultralytics): Conv, C2f, SPPF, PAN neck, Detect-style head
# --------------------------------------------------------------------------------------------


class YConv(nn.Module):
    """Ultralytics ``Conv``: Conv2d (no bias, "same" padding) + BN + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YBottleneck(nn.Module):
    """Ultralytics ``Bottleneck`` as used in C2f: 3x3 Conv -> 3x3 Conv (e=1.0), ``x + y`` when
    ``shortcut``."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = YConv(c, c, 3)
        self.cv2 = YConv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convolutions: cv1 1x1 (-> 2c) -> ``chunk(2, 1)`` -> n bottlenecks
    chained on the second half, every intermediate appended -> Concat of (2 + n) c channels ->
    cv2 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = YConv(c1, 2 * self.c, 1)
        self.cv2 = YConv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(YBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling - fast: cv1 1x1 (c/2) -> 3 chained MaxPool 5x5/1 pad 2 ->
    Concat of the 4 tensors -> cv2 1x1."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = YConv(c1, c_, 1)
        self.cv2 = YConv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YOLOv8Tiny(nn.Module):
    """YOLOv8 layout at tiny width. Backbone: Conv 3->8 /2, Conv 8->16 /2, C2f(16, n=1,
    shortcut) = P3 (8x8), Conv 16->32 /2, C2f(32, n=2, shortcut), SPPF(32) = P4 (4x4).
    PAN neck: nearest Upsample x2 of P4, Concat with P3, C2f(48->16) = N3; Conv 16->16 /2,
    Concat with P4, C2f(48->32) = N4. Detect-style head per level: box branch Conv 3x3 ->
    Conv2d 1x1 (4 * reg_max = 16) and class branch Conv 3x3 -> Conv2d 1x1 (4 classes),
    Concat -> ``view(N, 20, -1)``; the two levels concatenated on the anchor axis ->
    [N, 20, 64 + 16]."""

    def __init__(self, nc: int = 4, reg_max: int = 4):
        super().__init__()
        self.no = 4 * reg_max + nc
        self.b0, self.b1 = YConv(3, 8, 3, 2), YConv(8, 16, 3, 2)
        self.b2 = C2f(16, 16, 1, True)
        self.b3 = YConv(16, 32, 3, 2)
        self.b4 = C2f(32, 32, 2, True)
        self.b5 = SPPF(32, 32, 5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n3 = C2f(32 + 16, 16, 1, False)
        self.down = YConv(16, 16, 3, 2)
        self.n4 = C2f(16 + 32, 32, 1, False)
        self.box = nn.ModuleList(nn.Sequential(YConv(c, 16, 3), nn.Conv2d(16, 4 * reg_max, 1)) for c in (16, 32))
        self.cls = nn.ModuleList(nn.Sequential(YConv(c, 8, 3), nn.Conv2d(8, nc, 1)) for c in (16, 32))

    def forward(self, x):
        p3 = self.b2(self.b1(self.b0(x)))
        p4 = self.b5(self.b4(self.b3(p3)))
        n3 = self.n3(torch.cat([self.up(p4), p3], 1))
        n4 = self.n4(torch.cat([self.down(n3), p4], 1))
        outs = []
        for i, f in enumerate((n3, n4)):
            y = torch.cat([self.box[i](f), self.cls[i](f)], 1)
            outs.append(y.view(y.shape[0], self.no, -1))
        return torch.cat(outs, 2)


def yolov8_neck():
    """YOLOv8 pieces: C2f (1x1 conv -> chunk into 2 -> bottlenecks appended -> Concat of all
    -> 1x1 conv; the chunk halves are *both* consumed: one by the Concat only, one by the
    bottleneck chain and the Concat), SPPF (3 chained 5x5/1 maxpools, Concat of 4), SiLU
    activations, PAN neck (nearest upsample + Concat, strided conv + Concat) and a two-level
    Detect-style head flattened with ``view(N, no, -1)`` and concatenated on the anchor axis.
    Input 1x3x32x32, output [N, 20, 80]."""
    torch.manual_seed(16)
    return _finish(YOLOv8Tiny(), (1, 3, 32, 32), 16)


# --------------------------------------------------------------------------------------------
# ConvNeXt (Liu et al. 2022), official facebookresearch layout
# --------------------------------------------------------------------------------------------


class ChannelsFirstLayerNorm(nn.Module):
    """The official ConvNeXt ``LayerNorm(data_format="channels_first")``, used in the stem and
    the downsampling layers: normalise over dim 1 of [N, C, H, W] written out by hand
    (mean, ``(x - u).pow(2).mean``, ``/ sqrt(s + eps)``, ``weight[:, None, None] * x + bias``)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> permute(0, 2, 3, 1) -> LayerNorm -> Linear(4x) -> GELU -> Linear ->
    ``gamma * x`` (layer scale) -> permute(0, 3, 1, 2) -> ``input + x``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + y


class ConvNeXtTiny(nn.Module):
    """ConvNeXt: patchify stem Conv 4x4/4 + channels-first LN (16), 2 blocks at 16 channels
    (8x8), downsample LN + Conv 2x2/2 (32), 2 blocks at 32 channels (4x4), head
    ``x.mean([-2, -1])`` -> LayerNorm -> Linear."""

    def __init__(self, dims=(16, 32), depths=(2, 2), num_classes: int = 10):
        super().__init__()
        self.downsample = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstLayerNorm(dims[0]))])
        for a, b in zip(dims[:-1], dims[1:]):
            self.downsample.append(nn.Sequential(ChannelsFirstLayerNorm(a), nn.Conv2d(a, b, 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*(ConvNeXtBlock(d) for _ in range(n))) for d, n in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


def convnext_block():
    """ConvNeXt blocks: depthwise 7x7 conv, channels-last section (permute -> LayerNorm ->
    Linear 4x -> GELU -> Linear -> layer scale ``gamma * x`` -> permute back) with a residual,
    hand-written channels-first LayerNorm in the stem/downsampling (ReduceMean over the channel
    axis), no BatchNorm, head global mean -> LayerNorm -> Linear. LayerNorm affine parameters
    and gamma are randomised. Input 1x3x32x32."""
    torch.manual_seed(17)
    module = _randomize_ln_and_scales(ConvNeXtTiny(), 17)
    return _finish(module, (1, 3, 32, 32), 17)


# --------------------------------------------------------------------------------------------
# ShuffleNetV2 (Ma et al. 2018)
# --------------------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's channel shuffle: view(N, g, C/g, H, W) -> transpose(1, 2) ->
    contiguous -> view(N, C, H, W)."""
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 ``InvertedResidual``. stride 1: ``x1, x2 = x.chunk(2, 1)``,
    ``cat(x1, branch2(x2))``; stride 2: ``cat(branch1(x), branch2(x))`` with
    branch1 = dw3x3/2 + BN, 1x1 + BN + ReLU; branch2 = 1x1 + BN + ReLU, dw3x3 + BN,
    1x1 + BN + ReLU. Then channel shuffle with 2 groups."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        bf = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *conv_bn(cin, cin, 3, stride, groups=cin), *conv_bn(cin, bf, 1),
                nn.ReLU(inplace=True),
            )  # fmt: skip
        else:
            assert cin == 2 * bf
            self.branch1 = nn.Sequential()
        c2 = cin if stride > 1 else bf
        self.branch2 = nn.Sequential(
            *conv_bn(c2, bf, 1), nn.ReLU(inplace=True),
            *conv_bn(bf, bf, 3, stride, groups=bf),
            *conv_bn(bf, bf, 1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Tiny(nn.Module):
    """ShuffleNetV2: conv3x3/2 + BN + ReLU (8) + maxpool 3x3/2, stages of (2, 2) units with
    widths (16, 32) (first unit stride 2), conv5 1x1 + BN + ReLU (64), ``x.mean([2, 3])``,
    Linear."""

    def __init__(self, widths=(16, 32), repeats=(2, 2), stem=8, last=64, num_classes=10):
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(3, stem, 3, 2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, cin = [], stem
        for w, n in zip(widths, repeats):
            for i in range(n):
                units.append(ShuffleUnit(cin, w, 2 if i == 0 else 1))
                cin = w
        self.stages = nn.Sequential(*units)
        self.conv5 = nn.Sequential(*conv_bn(cin, last, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_unit():
    """ShuffleNetV2 units: channel split (``chunk(2, 1)``: half the channels bypass the branch),
    two-branch stride-2 units, Concat, and channel shuffle by Reshape -> Transpose -> Reshape
    (which permutes channels between the Concat and the next unit's split). Input 1x3x32x32."""
    torch.manual_seed(18)
    return _finish(ShuffleNetV2Tiny(), (1, 3, 32, 32), 18)


TOPOLOGY_ZOO: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "densenet": densenet,
    "inception": inception,
    "squeezenet_fire": squeezenet_fire,
    "mobilenet_v3_block": mobilenet_v3_block,
    "regnet_block": regnet_block,
    "unet": unet,
    "yolov8_neck": yolov8_neck,
    "convnext_block": convnext_block,
    "shufflenet_unit": shufflenet_unit,
}

#: every model of both dicts (``ZOO`` and ``TOPOLOGY_ZOO`` share no name).
ALL_MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {**ZOO, **TOPOLOGY_ZOO}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """``ALL_MODELS[name]()`` (``ZOO`` or ``TOPOLOGY_ZOO``): a fresh, seeded, eval-mode module and
    its example input shape."""
    return ALL_MODELS[name]()


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
                training=(torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL),
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
