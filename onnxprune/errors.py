"""Errors that the command line turns into one clear line and an exit code."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune reports to the user; `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str = "", parameter: str | None = None):
        super().__init__(message)
        #: the keyword argument of `prune()` (and so the CLI option) the error is about, if any
        self.parameter = parameter


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
