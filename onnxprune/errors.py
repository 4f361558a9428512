"""Errors that the command line turns into one clear line and an exit code.

A library error names the parameter it is about as a `{name}` placeholder (a `prune()` keyword
argument, see `FLAGS`): `str(error)` reads `ratio must be in [0, 1)`, and the command line prints
`error.cli_message()`, `--ratio must be in [0, 1)`, with the flag the user typed.
"""

from __future__ import annotations

import re

#: prune()'s (and the other entry points') parameter names -> the command-line flag that sets them
FLAGS: dict[str, str] = {
    name: "--" + name.replace("_", "-")
    for name in (
        "ratio",
        "min_channels",
        "round_to",
        "scope",
        "exclude",
        "seed",
        "calib",
        "calib_samples",
        "preprocess",
        "batch_size",
        "target_flops",
        "target_params",
        "target_latency",
        "allocate",
        "layerwise",
        "samples",
        "jobs",
        "search_eval",
        "allocate_samples",
        "reconstruct",
        "ridge",
        "round_batch",
        "prune_residual",
        "strict",
        "criterion",
        "ratios",
        "epochs",
        "lr",
        "val",
        "teacher",
        "checkpoint_dir",
        "resume",
        "plan",
        "threads",
        "batch",
        "ep",
        "warmup",
        "iters",
        "shape",
        "workers",
        "output",
        "refresh",
        "runs",
        "optimizer",
        "kd_alpha",
        "kd_temperature",
        "clip_grad",
        "data",
        "eval_tokens",
        "steps",
        "schedule",
    )
}
FLAGS.update({"round_ep": "--ep", "input_shapes": "--shape", "verify": "--no-verify"})

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class OnnxPruneError(Exception):
    """Base class of every error onnxprune reports to the user; `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str = "", parameter: str | None = None):
        super().__init__(message)
        #: the message with `{parameter}` placeholders (see the module docstring)
        self.template = message
        #: the keyword argument (and so the CLI option) the error is about, if any
        self.parameter = parameter

    def render(self, name_of) -> str:
        """The message with each known `{parameter}` placeholder replaced by `name_of(parameter)`."""
        return _PLACEHOLDER.sub(lambda m: name_of(m.group(1)) if m.group(1) in FLAGS else m.group(0), self.template)

    def __str__(self) -> str:
        return self.render(lambda name: name)

    def cli_message(self) -> str:
        """The message as the command line prints it: parameters named by their flags."""
        return self.render(FLAGS.__getitem__)


class InputError(OnnxPruneError):
    """The user's input (file, option, model) cannot be used; nothing was written."""

    exit_code = 2


class VerificationError(OnnxPruneError):
    """The pruned model does not compute what the masked reference computes; it was not written."""

    exit_code = 3


class TrainingDivergedError(OnnxPruneError):
    """Fine-tuning produced a non-finite loss (learning rate too high); nothing was written."""

    exit_code = 4


class InternalError(OnnxPruneError):
    """onnxprune itself went wrong on an input that passed the checks at load (e.g. normalization
    produced a model the ONNX checker or ONNX Runtime refuses): our bug, never the input's."""

    exit_code = 1


def short_message(exc: Exception) -> str:
    """The first line of an exception's message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
