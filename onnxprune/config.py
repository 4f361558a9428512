"""The spine of a prune run: a `PruneConfig` of small sections (selection, calibration, allocation,
rounding, recovery, verification, evaluation), built once, by the CLI or from `prune()`'s keyword arguments,
validated before any work, and read by every stage."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.bench.providers import resolve_ep
from onnxprune.criteria.base import get_criterion
from onnxprune.errors import InputError
from onnxprune.measure.calibration import CalibrationData, load_calibration
from onnxprune.measure.perplexity import PerplexityEval
from onnxprune.recover.distill import DEFAULT_SECONDS, RECOVERIES, DistillOptions
from onnxprune.select.allocation import AllocationRequest
from onnxprune.select.rounding import AutoRoundOptions
from onnxprune.select.selection import SelectOptions


@dataclass
class SelectionConfig:
    """Which channels go: the criterion, the ratio, the floor, the scope, the groups left alone."""

    criterion: str = "l1"
    ratio: float = 0.5
    min_channels: int = 1
    scope: str = "local"
    exclude: tuple[str, ...] = ()
    #: also prune the channels LayerNorms normalize over (a transformer's residual stream)
    prune_residual: bool = False


@dataclass
class CalibrationConfig:
    """Calibration data for the data-driven criteria, strategies and reconstruction."""

    source: str | os.PathLike | None = None
    samples: int | None = 512
    preprocess: str | None = None
    batch_size: int = 64

    def load(self, model: onnx.ModelProto, seed: int) -> CalibrationData | None:
        """The calibration set for `model`, or None when no source was given."""
        if not self.source:
            return None
        return load_calibration(self.source, model, self.samples, self.preprocess, self.batch_size, seed)


@dataclass
class RoundingConfig:
    """Kept channel counts: multiples of `to`, or 'auto' (timed on `ep` at batch `batch`)."""

    to: int | str = 1
    ep: str = "cpu"
    batch: int = 1

    @property
    def auto(self) -> bool:
        """True for `to='auto'`."""
        return self.to == "auto"

    @property
    def multiple(self) -> int:
        """The multiple selection rounds kept counts to: `to`, or 1 for 'auto' (rounding comes after)."""
        if self.auto:
            return 1
        assert not isinstance(self.to, str), "validate() refuses a `to` that is neither an integer nor 'auto'"
        return self.to

    def validate(self, allocation: AllocationRequest) -> None:
        """InputError for a bad `to`/`batch`, 'auto' with a target, or a missing provider."""
        if not self.auto:
            if isinstance(self.to, bool) or not isinstance(self.to, (int, np.integer)):
                raise InputError(
                    f"{{round_to}} must be a positive integer or 'auto', got '{self.to}'", parameter="round_to"
                )
            return
        if allocation.active:
            raise InputError(
                "{round_to} auto cannot be combined with a target or {allocate} (rounding up would "
                "move the result off the target); use {ratio}, or an integer {round_to}",
                parameter="round_to",
            )
        if not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"{{round_batch}} must be a positive integer, got {self.batch}", parameter="round_batch")

        resolve_ep(self.ep)  # before the work: a missing provider is a clear error now

    def options(self) -> AutoRoundOptions:
        """What `select.rounding.auto_round` needs."""
        return AutoRoundOptions(self.ep, self.batch)


@dataclass
class RecoveryConfig:
    """Least-squares reconstruction of the pruned consumer layers (needs calibration data)."""

    reconstruct: bool = False
    ridge: float | None = None  # None ('auto'): λ chosen per layer from held-out error
    #: label-free recovery after reconstruction: None or 'kd' (recover/distill.py)
    method: str | None = None
    seconds: float | None = None
    steps: int | None = None
    lr: float | None = None

    def distill_options(self, seed: int) -> DistillOptions:
        """The `--recover kd` recipe: the time budget (default 300 s unless only steps are given)."""
        seconds = self.seconds if self.seconds is not None or self.steps is not None else DEFAULT_SECONDS
        options = DistillOptions(seconds=seconds, steps=self.steps, seed=seed)
        if self.lr is not None:
            options.lr = self.lr
        return options

    def validate(self, calibration: CalibrationConfig) -> None:
        """InputError for reconstruction or distillation without data, or a bad ridge or budget."""
        if self.method is not None:
            if self.method not in RECOVERIES:
                raise InputError(
                    f"{{recover}} must be one of {', '.join(RECOVERIES)}, got {self.method}", parameter="recover"
                )
            if not calibration.source:
                raise InputError(
                    "{recover} kd distills on calibration images: add {calib} PATH (an image folder or .npz/.npy; "
                    "labels are not needed)",
                    parameter="recover",
                )
            self.distill_options(0).validate()
        if self.reconstruct and not calibration.source:
            raise InputError(
                "{reconstruct} needs calibration data: add {calib} PATH (.npz/.npy or an image folder)",
                parameter="reconstruct",
            )
        if self.ridge is not None and not (self.ridge >= 0 and np.isfinite(self.ridge)):
            raise InputError(f"{{ridge}} must be a finite number >= 0, got {self.ridge}", parameter="ridge")


@dataclass
class VerificationConfig:
    """The masked-reference check: on or off, the shapes to run at, refuse or freeze on failure."""

    enabled: bool = True
    input_shapes: dict[str, tuple] | None = None
    strict: bool = False


@dataclass
class EvaluationConfig:
    """Held-out token ids (`eval_tokens`, a .npz) on which a causal LM's perplexity is measured,
    before and after pruning (see measure/perplexity.py)."""

    tokens: str | os.PathLike | None = None

    def validate(self) -> None:
        """InputError for a token file that does not exist (the model is checked by `open`)."""
        if self.tokens and not os.path.isfile(self.tokens):
            raise InputError(f"{{eval_tokens}} {self.tokens}: no such file", parameter="eval_tokens")

    def open(self, model: onnx.ModelProto, batch_size: int) -> PerplexityEval | None:
        """The held-out set for `model` (refused unless it is a causal LM), or None without a file."""
        return PerplexityEval.open(self.tokens, model, batch_size) if self.tokens else None


#: prune()'s keyword arguments -> (section, field) of PruneConfig
KEYWORDS: dict[str, tuple[str, str]] = {
    "criterion": ("selection", "criterion"),
    "ratio": ("selection", "ratio"),
    "min_channels": ("selection", "min_channels"),
    "scope": ("selection", "scope"),
    "exclude": ("selection", "exclude"),
    "prune_residual": ("selection", "prune_residual"),
    "calib": ("calibration", "source"),
    "calib_samples": ("calibration", "samples"),
    "preprocess": ("calibration", "preprocess"),
    "batch_size": ("calibration", "batch_size"),
    "target_flops": ("allocation", "flops"),
    "target_params": ("allocation", "params"),
    "target_latency": ("allocation", "latency"),
    "allocate": ("allocation", "strategy"),
    "layerwise": ("allocation", "layerwise"),
    "samples": ("allocation", "samples"),
    "jobs": ("allocation", "jobs"),
    "search_eval": ("allocation", "search_eval"),
    "allocate_samples": ("allocation", "study_samples"),
    "round_to": ("rounding", "to"),
    "round_ep": ("rounding", "ep"),
    "round_batch": ("rounding", "batch"),
    "reconstruct": ("recovery", "reconstruct"),
    "ridge": ("recovery", "ridge"),
    "recover": ("recovery", "method"),
    "recover_time": ("recovery", "seconds"),
    "recover_steps": ("recovery", "steps"),
    "recover_lr": ("recovery", "lr"),
    "verify": ("verification", "enabled"),
    "input_shapes": ("verification", "input_shapes"),
    "strict": ("verification", "strict"),
    "eval_tokens": ("evaluation", "tokens"),
}


@dataclass
class PruneConfig:
    """Everything a prune run is asked to do, by section; `seed` drives every random choice."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    allocation: AllocationRequest = field(default_factory=AllocationRequest)
    rounding: RoundingConfig = field(default_factory=RoundingConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0

    @classmethod
    def from_keywords(cls, **keywords) -> PruneConfig:
        """The config `prune(**keywords)` describes (names as in `KEYWORDS`, plus `seed`)."""
        config = cls(seed=keywords.pop("seed", 0))
        for name, value in keywords.items():
            if name not in KEYWORDS:
                raise TypeError(f"prune() got an unexpected keyword argument '{name}'")
            section, attribute = KEYWORDS[name]
            setattr(getattr(config, section), attribute, value)
        config.selection.exclude = tuple(config.selection.exclude)
        return config

    def validate(self) -> None:
        """InputError for any option outside its range, before any work is done."""
        self.rounding.validate(self.allocation)
        self.allocation.validate_search(bool(self.calibration.source))
        self.select_options().validate()
        self.recovery.validate(self.calibration)
        self.evaluation.validate()

        get_criterion(self.selection.criterion)

    def select_options(self) -> SelectOptions:
        """What selection needs (an 'auto' rounding selects unrounded; rounding comes after)."""
        s = self.selection
        return SelectOptions(s.ratio, s.min_channels, self.rounding.multiple, s.scope)

    def record(self, data: CalibrationData | None) -> dict:
        """The options as the plan file and the report record them (`options`)."""
        s, calib = self.selection, self.calibration.source
        shapes = self.verification.input_shapes or {}
        return {
            "ratio": s.ratio,
            "min_channels": s.min_channels,
            "round_to": self.rounding.to,
            "scope": s.scope,
            "exclude": list(s.exclude),
            "seed": self.seed,
            "prune_residual": s.prune_residual,
            "calib": str(calib) if calib else None,
            "calib_samples": data.samples if data else None,
            "shapes": {name: list(shape) for name, shape in shapes.items()},
        }
