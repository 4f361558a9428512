"""Perplexity of a causal language model on held-out token ids (`--eval-tokens FILE.npz`).

The file is read like a calibration set (`measure.calibration`): one array per model input, named
like it (`input_ids`, and `attention_mask` when the model takes one). The model's first output
must be logits `[batch, sequence, vocab]`, its last axis as long as the token embedding table (the
`Gather` that reads the token ids) has rows. Position t's logits predict token t + 1: the
perplexity is exp of the mean next-token cross-entropy, over every predicted token whose
attention mask is not 0, computed with ONNX Runtime in float64 from the float32 logits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import InputError
from onnxprune.measure.calibration import CalibrationData, ModelInput, load_calibration
from onnxprune.model.runtime import make_session
from onnxprune.model.view import ModelView

#: the names that mark the token-id and the attention-mask inputs (Hugging Face's)
TOKEN_INPUT, MASK_INPUT = "input_ids", "attention_mask"


def token_input(inputs: list[ModelInput]) -> ModelInput:
    """The input that takes the token ids: `input_ids`, else the only integer input of rank 2."""
    named = [i for i in inputs if i.name == TOKEN_INPUT]
    candidates = named or [i for i in inputs if i.integer and len(i.shape) == 2]
    if len(candidates) != 1:
        raise InputError(
            "{eval_tokens}: perplexity needs a language model that takes token ids (an integer input "
            f"'{TOKEN_INPUT}' [batch, sequence]); the model's inputs are "
            + ", ".join(f"'{i.name}' {i.dtype} rank {len(i.shape)}" for i in inputs),
            parameter="eval_tokens",
        )
    return candidates[0]


def vocabulary_size(model: onnx.ModelProto, tokens: str) -> int | None:
    """Rows of the embedding table a `Gather` reads the token ids from (through Casts), or None."""
    view = ModelView(model)
    names = {tokens}
    for node in view.graph.node:  # topological order: a Cast of the ids comes before its readers
        if node.op_type == "Cast" and node.input[0] in names:
            names.add(node.output[0])
        elif node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in names:
            table = view.value(node.input[0])
            if table is not None and table.ndim == 2:
                return int(table.shape[0])
    return None


@dataclass
class PerplexityEval:
    """A held-out token set and what perplexity reads of the model: the token input, the logits
    output and the vocabulary size (None when no embedding table was found)."""

    data: CalibrationData
    tokens: str
    logits: str
    vocab: int | None

    @classmethod
    def open(cls, path: str | os.PathLike, model: onnx.ModelProto, batch_size: int = 64) -> PerplexityEval:
        """The held-out set for `model`, refused (InputError) unless the model is a causal LM."""
        tokens = token_input(ModelInput.every(model)).name
        vocab = vocabulary_size(model, tokens)
        output = model.graph.output[0]
        dims = output.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if dims and (len(shape) != 3 or (vocab is not None and isinstance(shape[-1], int) and shape[-1] != vocab)):
            raise not_logits(output.name, shape, vocab)
        try:
            data = load_calibration(path, model, samples=None, batch_size=batch_size)
        except InputError as exc:
            raise InputError(exc.template.replace("{calib}", "{eval_tokens}"), parameter="eval_tokens") from None
        return cls(data, tokens, output.name, vocab)

    def perplexity(self, model: onnx.ModelProto) -> tuple[float, int]:
        """exp(mean next-token cross-entropy) of `model` on the set, and the tokens predicted."""
        session = make_session(model, optimize=True)
        total, count = 0.0, 0
        for feeds, _ in self.data.batches():
            (logits,) = session.run([self.logits], feeds)
            nll, predicted = self.next_token_nll(logits, feeds)
            total, count = total + nll, count + predicted
        if count == 0:
            raise InputError(
                f"{{eval_tokens}} {self.data.source}: no token to predict (sequences need 2 or more "
                "tokens with a non-zero attention mask)",
                parameter="eval_tokens",
            )
        return math.exp(total / count), count

    def next_token_nll(self, logits: np.ndarray, feeds: dict[str, np.ndarray]) -> tuple[float, int]:
        """Summed −log p(token t + 1 | logits at t) of one batch, and how many tokens it counts."""
        ids = feeds[self.tokens]
        if logits.ndim != 3 or logits.shape[:2] != ids.shape or self.vocab not in (None, logits.shape[2]):
            raise not_logits(self.logits, list(logits.shape), self.vocab)
        if ids.min() < 0 or ids.max() >= logits.shape[2]:
            raise InputError(
                f"{{eval_tokens}} {self.data.source}: token ids {ids.min()}..{ids.max()} are outside the "
                f"vocabulary of {logits.shape[2]} tokens",
                parameter="eval_tokens",
            )
        x = logits[:, :-1].astype(np.float64)
        top = x.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(x - top).sum(axis=-1)) + top[..., 0]
        targets = ids[:, 1:]
        picked = np.take_along_axis(x, targets[..., None].astype(np.int64), axis=-1)[..., 0]
        weight = (feeds[MASK_INPUT][:, 1:] != 0) if MASK_INPUT in feeds else np.ones(targets.shape, bool)
        return float(((log_z - picked) * weight).sum()), int(weight.sum())

    def compare(self, original: onnx.ModelProto, pruned: onnx.ModelProto) -> dict:
        """The report's `perplexity` entry: before, after, their ratio, the tokens and the file."""
        before, tokens = self.perplexity(original)
        after, _ = self.perplexity(pruned)
        return {
            "before": before,
            "after": after,
            "ratio": after / before,
            "tokens": tokens,
            "source": str(self.data.source),
        }


def not_logits(name: str, shape: list, vocab: int | None) -> InputError:
    """The refusal of a model whose first output is not next-token logits."""
    table = f" over the {vocab} tokens of its embedding table" if vocab is not None else ""
    return InputError(
        "{eval_tokens}: perplexity needs a causal language model whose first output is logits "
        f"[batch, sequence, vocab]{table}; output '{name}' is [{', '.join(map(str, shape))}]",
        parameter="eval_tokens",
    )
