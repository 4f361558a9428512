"""How `random-search` ranks its candidates (`--search-eval`): on the raw pruned model's output, or
after a cheap recovery of each candidate, as the random-channel-pruning study (Li et al. 2022)
ranks sampled architectures after a short fine-tuning.

* `raw` (the default): the relative L2 change of the first output of the raw pruned model over
  the whole calibration set (measure/engine.py).
* `reconstruct`: each candidate is reconstructed by least squares (recover/reconstruct.py, the
  run's `ridge`); its score is the relative output error on the held-out calibration batches after
  reconstruction (before it, when reconstruction was not applied). Every candidate is measured on
  the same held-out batches.
* `kd-steps:N`: each candidate is distilled from the input model for N optimizer steps
  (recover/distill.py, seeded by the run's seed, so every candidate trains and is measured on the
  same split); its score is the held-out relative output error against the input model (the
  metric distillation keeps its checkpoints by), ties broken by the held-out KL.

This module only parses the mode and holds a candidate's score; the recovery that computes it is
built by recover/candidates.py and reaches the strategy as `AllocationContext.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxprune.errors import InputError

#: the forms `search_eval` accepts, as error messages and --help name them
FORMS = "raw, reconstruct or kd-steps:N (N >= 1 distillation steps per candidate)"
KD_PREFIX = "kd-steps:"


@dataclass(frozen=True)
class SearchEval:
    """A parsed `search_eval`: `mode` is raw, reconstruct or kd; `steps` the kd steps."""

    mode: str = "raw"
    steps: int | None = None

    @property
    def name(self) -> str:
        """The mode as the user writes it: 'raw', 'reconstruct' or 'kd-steps:N'."""
        return f"{KD_PREFIX}{self.steps}" if self.mode == "kd" else self.mode

    @property
    def recovers(self) -> bool:
        """True when each candidate is recovered before it is scored."""
        return self.mode != "raw"


def parse_search_eval(text: object) -> SearchEval:
    """The SearchEval `text` names (None: raw); InputError naming the valid forms otherwise."""
    if text is None:
        return SearchEval()
    value = str(text).strip().lower()
    if value in ("raw", "reconstruct"):
        return SearchEval(value)
    if value.startswith(KD_PREFIX):
        count = value[len(KD_PREFIX) :]
        if count.isdigit() and int(count) >= 1:
            return SearchEval("kd", int(count))
    raise InputError(f"{{search_eval}} must be {FORMS}, got '{text}'", parameter="search_eval")


@dataclass
class CandidateScore:
    """A candidate's score after its recovery: lower `score` is better, `tie` breaks equal scores
    (lower is better), `record` is what the allocation history shows of the recovery."""

    score: float
    tie: float = 0.0
    record: dict = field(default_factory=dict)
