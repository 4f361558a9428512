"""Options that several subcommands share: one function per option (or group of options), so that
each has one type, default and metavar everywhere; a command passes its own help text where the
option means something slightly different to it."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxprune.errors import InputError

PREPROCESS_SPEC = (
    "for images/uint8 arrays, e.g. 'resize=32,scale=255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw'"
)


def add_model(parser: argparse.ArgumentParser, help: str = "input .onnx file (never modified)") -> None:
    """The positional input model."""
    parser.add_argument("model", help=help)


def add_output(parser: argparse.ArgumentParser, suffix: str) -> None:
    """-o/--output, by default `<input stem><suffix>` beside the input (see `output_path`)."""
    parser.add_argument("-o", "--output", help=f"output model (default: <input stem>{suffix})")


def output_path(model: str, output: str | None, suffix: str) -> Path:
    """The -o path, or `<input stem><suffix>` beside `model`; InputError when it is the input itself."""
    source = Path(model)
    path = Path(output) if output else source.with_name(source.stem + suffix)
    if path.resolve() == source.resolve():
        raise InputError(f"output path {path} is the input; choose another with -o")
    return path


def add_criterion(parser: argparse.ArgumentParser, meaning: str) -> None:
    """--criterion NAME (default l1); `meaning` starts the help text, the known names follow."""
    from onnxprune.criteria import CRITERIA

    def described(data: bool) -> str:
        return "; ".join(f"{n}: {c.description}" for n, c in sorted(CRITERIA.items()) if c.needs_data == data)

    parser.add_argument(
        "--criterion",
        default="l1",
        choices=sorted(CRITERIA),
        metavar="NAME",
        help=f"{meaning} (default l1). From the weights: {described(False)}. From --calib data: {described(True)}",
    )


def add_min_channels(parser: argparse.ArgumentParser) -> None:
    """--min-channels (default 1)."""
    parser.add_argument("--min-channels", type=int, default=1, help="keep at least this many per layer (default 1)")


def add_exclude(parser: argparse.ArgumentParser, help: str) -> None:
    """--exclude PATTERN (repeatable)."""
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=help)


def add_seed(parser: argparse.ArgumentParser, help: str) -> None:
    """--seed (default 0)."""
    parser.add_argument("--seed", type=int, default=0, help=help)


def add_shape(parser: argparse.ArgumentParser, help: str) -> None:
    """--shape NAME=DxDx... (repeatable); `input_shapes` parses the items."""
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=DxDx...", help=help)


def input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """--shape items as a dict (empty when none were given)."""
    from onnxprune.bench.suite import parse_shapes

    return parse_shapes(items)


def add_calib(
    parser: argparse.ArgumentParser,
    help: str = "calibration data for data-driven criteria: .npz/.npy (arrays named like the model "
    "input, or 'x'; labels 'y') or an image folder class/xxx.jpg",
) -> None:
    """--calib PATH."""
    parser.add_argument("--calib", metavar="PATH", help=help)


def add_calib_samples(
    parser: argparse.ArgumentParser, default: int = 512, help: str = "calibration samples to use (default 512)"
) -> None:
    """--calib-samples N."""
    parser.add_argument("--calib-samples", type=int, default=default, metavar="N", help=help)


def add_preprocess(
    parser: argparse.ArgumentParser, help: str = PREPROCESS_SPEC + " (default scale=255, layout from the model)"
) -> None:
    """--preprocess SPEC."""
    parser.add_argument("--preprocess", metavar="SPEC", help=help)


def add_batch_size(parser: argparse.ArgumentParser, help: str = "calibration batch size (default 64)") -> None:
    """--batch-size (default 64)."""
    parser.add_argument("--batch-size", type=int, default=64, help=help)


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """--calib, --calib-samples, --preprocess, --batch-size (prune, sensitivity)."""
    add_calib(parser)
    add_calib_samples(parser)
    add_preprocess(parser)
    add_batch_size(parser)


def add_ep(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """--ep EP: an execution provider of `bench.providers.EPS` (default cpu)."""
    from onnxprune.bench.providers import EPS

    parser.add_argument(
        "--ep",
        default="cpu",
        choices=sorted(EPS),
        metavar="EP",
        help=help or f"execution provider: {', '.join(EPS)} (default cpu)",
    )


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """--ep and --threads (bench, profile)."""
    add_ep(parser)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0: all cores)")
