"""Shared helpers for the benchmarks: the full ResNet-50, ONNX export, a synthetic deep
conv-BN-ReLU chain, timing helpers and a small table printer.

The torch model zoo lives in ``tests/zoo.py``; it is imported by putting the repository's
``tests/`` folder on ``sys.path`` (the benchmarks are scripts, not a package).
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import zoo  # noqa: E402  (tests/zoo.py)

RESNET50_INPUT = (1, 3, 224, 224)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def build_resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """The real ResNet-50 (base 64, layers 3-4-6-3, torchvision v1.5 layout) in eval mode,
    seeded weights and non-trivial BN statistics (randomised without a calibration pass, which
    at 224x224 would cost several seconds and changes nothing for timing)."""
    torch.manual_seed(seed)
    model = zoo.ResNet50(base=64, layers=(3, 4, 6, 3), num_classes=num_classes)
    zoo.randomize_bn(model, seed)
    return model.eval()


def export(module: nn.Module, input_shape: Sequence[int], path: str | os.PathLike) -> Path:
    """TorchScript export (dynamo=False: opset 17, BN folded, dynamic batch) of a fresh copy."""
    return zoo.export_onnx(copy.deepcopy(module), tuple(input_shape), path, dynamo=False)


class ConvBNReLU(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )


class Residual(nn.Module):
    """``x + body(x)`` followed by ReLU: ties the channels of everything it adds together."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.relu(x + self.body(x))


def deep_chain(depth: int, channels: int = 16, residual_every: int = 8) -> nn.Module:
    """A stem conv and ``depth`` conv-BN-ReLU blocks in a plain ``nn.Sequential``; every
    ``residual_every``-th pair of blocks is wrapped in a residual Add (0 disables them), then
    global average pool + Linear. The node count grows linearly with ``depth``."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]
    i = 0
    while i < depth:
        if residual_every and i % residual_every == 0 and i + 2 <= depth:
            layers.append(Residual(nn.Sequential(ConvBNReLU(channels), ConvBNReLU(channels))))
            i += 2
        else:
            layers.append(ConvBNReLU(channels))
            i += 1
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, 10)]
    torch.manual_seed(depth)
    model = nn.Sequential(*layers)
    zoo.randomize_bn(model, depth)
    return model.eval()


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, with the garbage collector run before and paused during."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        if enabled:
            gc.enable()


def median_time(
    fn: Callable[[], object], repeat: int = 3, setup: Callable[[], object] | None = None
) -> tuple[float, list[float]]:
    """Median and all samples of ``repeat`` timed calls. With ``setup``, each call is
    ``fn(setup())`` and only ``fn`` is timed."""
    samples = []
    for _ in range(repeat):
        if setup is None:
            dt, _ = timed(fn)
        else:
            arg = setup()
            dt, _ = timed(lambda arg=arg: fn(arg))
        samples.append(dt)
    return statistics.median(samples), samples


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    out = [line(cells[0]), sep] + [line(r) for r in cells[1:]]
    if title:
        out.insert(0, title)
    return "\n".join(out)


def environment() -> str:
    import onnx
    import onnxruntime

    return (
        f"python {sys.version.split()[0]}, torch {torch.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPU cores"
    )


# --------------------------------------------------------------------------------------------
# background load: both benchmarks are very sensitive to other processes on a 2-core machine
# (ONNX Runtime's and torch's thread pools spin-wait for a preempted worker)
# --------------------------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def busy_cores(interval: float = 1.0) -> float | None:
    """CPU cores kept busy by *other* processes (this one sleeps while sampling /proc/stat);
    None where /proc/stat is unavailable."""
    a = _cpu_times()
    time.sleep(interval)
    b = _cpu_times()
    if a is None or b is None or b[0] == a[0]:
        return None
    total, idle = b[0] - a[0], b[1] - a[1]
    return (1 - idle / total) * (os.cpu_count() or 1)


def wait_for_idle(max_wait: float, threshold: float = 0.3) -> str:
    """Wait up to ``max_wait`` seconds until other processes use less than ``threshold`` cores;
    return a one-line description of the background load found."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_cores()
        if busy is None:
            return "background load: unknown (no /proc/stat)"
        if busy < threshold or time.monotonic() >= deadline:
            break
    note = "" if busy < threshold else "  ** timings are unreliable: other processes compete for the CPU **"
    return f"background load: {busy:.2f} of {os.cpu_count()} cores busy with other processes{note}"


def build_mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """The real MobileNetV2 (width 1.0, last conv 1280, 1000 classes) for 224x224 inputs, in eval
    mode with seeded weights and randomised BN statistics."""
    torch.manual_seed(seed)
    model = zoo.MobileNetV2(width=1.0, num_classes=num_classes)
    zoo.randomize_bn(model, seed)
    return model.eval()
