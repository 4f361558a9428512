"""Peak memory of pruning a model larger than 2 GB (weights in external data).

Goal (issue 8): `onnxprune MODEL --ratio 0.5` on a >2 GB float32 model peaks under 2.5x the
model's size in resident memory, without loading the weights twice. The model is generated on
the fly into a temporary folder: a wide VGG-style stack of 3x3 convolutions on a 4x4 input
(1024 -> 4096 -> 4096 -> 4096 -> 4096 -> 2048 channels, ~2.27 GB of weights), written tensor by
tensor into `<model>.onnx.data`, so generating it needs little memory. The pruning runs as a child
process; its peak RSS is read from `os.wait4` (the kernel's high-water mark, Linux ru_maxrss).

    python benchmarks/memory.py [--width 4096] [--depth 3] [--ratio 0.5] [--keep DIR]

Exits 1 when peak RSS / model size exceeds 2.5 (or the pruning fails).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

GOAL = 2.5
BLOCK = 256  # output filters generated and written at a time


def conv_widths(width: int, depth: int) -> list[int]:
    """Channels along the stack: 64 in, 1024, `depth`+1 layers of `width`, width/2, then 10."""
    return [64, 1024] + [width] * (depth + 1) + [width // 2, 10]


def write_weight(handle, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, int]:
    """Write He-initialized float32 weights block by block; returns (offset, length) in the file."""
    offset = handle.tell()
    fan_in = int(np.prod(shape[1:]))
    for start in range(0, shape[0], BLOCK):
        rows = min(BLOCK, shape[0] - start)
        block = rng.standard_normal((rows, *shape[1:]), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        handle.write(block.tobytes())
    return offset, handle.tell() - offset


def external_tensor(name: str, shape: tuple[int, ...], location: str, offset: int, length: int) -> TensorProto:
    """A float32 initializer whose data live in `location` at `offset`."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def generate(path: Path, width: int, depth: int, seed: int = 0) -> int:
    """Write the wide VGG to `path` (+ `path.data`); returns the size of its weights in bytes."""
    rng = np.random.default_rng(seed)
    widths = conv_widths(width, depth)
    location = path.name + ".data"
    nodes, inits, current = [], [], "x"
    with open(path.parent / location, "wb") as handle:
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            w, b = f"conv{i}.weight", f"conv{i}.bias"
            inits.append(
                external_tensor(w, (c_out, c_in, 3, 3), location, *write_weight(handle, rng, (c_out, c_in, 3, 3)))
            )
            inits.append(external_tensor(b, (c_out,), location, *write_weight(handle, rng, (c_out, 1))))
            nodes.append(helper.make_node("Conv", [current, w, b], [f"conv{i}"], name=f"Conv{i}", pads=[1, 1, 1, 1]))
            current = f"conv{i}"
            if i < len(widths) - 2:
                nodes.append(helper.make_node("Relu", [current], [f"relu{i}"], name=f"Relu{i}"))
                current = f"relu{i}"
        size = handle.tell()
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["y"], name="Pool"))
    graph = helper.make_graph(
        nodes,
        "wide_vgg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return size


def peak_rss(command: list[str]) -> tuple[int, int, float, str]:
    """Run `command`; (exit code, peak RSS in bytes, seconds, stderr tail)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    return child.returncode, usage.ru_maxrss * 1024, time.perf_counter() - start, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096, help="channels of the wide layers (default 4096)")
    parser.add_argument("--depth", type=int, default=3, help="width x width layers (default 3)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxprune-memory-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "wide_vgg.onnx"
        started = time.perf_counter()
        size = generate(model, args.width, args.depth)
        print(f"generated {model.name}: {size / 1e9:.2f} GB of weights in {time.perf_counter() - started:.0f}s")
        output = folder / "wide_vgg.pruned.onnx"
        code, rss, seconds, tail = peak_rss(
            [sys.executable, "-m", "onnxprune", str(model), "--ratio", str(args.ratio), "-o", str(output)]
        )
        out_size = sum(p.stat().st_size for p in folder.glob("wide_vgg.pruned.onnx*"))
    ratio = rss / size
    print(f"{'model (weights)':>18s} {'peak RSS':>10s} {'RSS / model':>12s} {'pruned size':>12s} {'time':>7s}")
    print(f"{size / 1e9:16.2f} GB {rss / 1e9:7.2f} GB {ratio:12.2f} {out_size / 1e9:9.2f} GB {seconds:6.0f}s")
    if code != 0:
        print(f"onnxprune exited {code}: {tail.strip()}")
        return 1
    print(f"goal: peak RSS < {GOAL}x the model: {'met' if ratio < GOAL else 'MISSED'}")
    return 0 if ratio < GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
