"""The fine-tuning practices of ``onnxprune finetune`` beyond plain training, as hooks of one run:
``--unfold-bn`` (:mod:`.unfold_bn`), ``--reinit`` (:mod:`.reinit`) and ``--group-lasso λ``
(:mod:`.group_lasso`).

:meth:`Practices.prepare` edits the freshly converted module before the optimizer sees it
(re-initialize; put BatchNormalization back), :meth:`Practices.after_step` runs after every
optimizer step (the group-lasso proximal step), :meth:`Practices.metrics` adds to each epoch's
history entry, and :meth:`Practices.finish` folds the BN nodes back before the export.
:meth:`Practices.describe` goes into checkpoints so that ``--resume`` refuses a run with other
practices (the module's state, BN tensors included, is in the checkpoint's ``module``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxprune.errors import InputError
from onnxprune.recover.group_lasso import GroupLasso
from onnxprune.recover.reinit import reinitialize
from onnxprune.recover.unfold_bn import Unfolded, fold_batchnorm, unfold_batchnorm, unfolded_members


@dataclass
class Practices:
    """What a run does besides training the converted module as it is."""

    unfold_bn: bool = False
    reinit: bool = False
    group_lasso: float = 0.0
    unfolded: list[Unfolded] = field(default_factory=list)
    lasso: GroupLasso | None = None
    log: Any = None

    def __post_init__(self) -> None:
        if self.group_lasso < 0:
            raise InputError(
                f"{{group_lasso}} must be 0 (off) or positive, got {self.group_lasso}", parameter="group_lasso"
            )

    @property
    def default_clip_grad(self) -> float:
        """The gradient clipping norm when none is given: 1 for the converted graph as exported
        (BatchNormalization folded: it diverges unclipped), 5 when the run puts BN back
        (``--unfold-bn``, ``--reinit``): normalized layers have larger, safe gradients that a norm
        of 1 slows (ResNet-20 at 50 % MACs, 3 epochs x 10,000 images with --unfold-bn: error
        34.8 % at 1, 28.5 % at 5)."""
        return 5.0 if self.unfold_bn or self.reinit else 1.0

    @property
    def active(self) -> bool:
        """True when any practice is on."""
        return self.unfold_bn or self.reinit or self.group_lasso > 0

    def describe(self) -> dict:
        """The options, as a checkpoint records them."""
        return {"unfold_bn": self.unfold_bn, "reinit": self.reinit, "group_lasso": self.group_lasso}

    def check_checkpoint(self, state: dict, path) -> None:
        """An InputError when the checkpoint at `path` was made with other practices."""
        made = state.get("practices") or Practices().describe()
        if made != self.describe():
            raise InputError(
                f"{{resume}}: {path} was made with {made}, not {self.describe()} "
                "(--unfold-bn, --reinit and --group-lasso must match)",
                parameter="resume",
            )

    def prepare(self, module, model: onnx.ModelProto, train, groups: list) -> None:
        """Re-initialize and/or unfold BatchNormalization in `module` (converted from `model`),
        then set up the group-lasso channels (`groups`: the model's channel groups)."""
        if self.reinit:
            reinitialize(module)
            for op_type, _, outs, _ in module.graph_nodes:  # BNs in the graph train from scratch too
                if op_type == "BatchNormalization":
                    module.batch_statistics.add(outs[0])
        if self.unfold_bn or self.reinit:
            self.unfolded = unfold_batchnorm(module, model, train, identity=not self.reinit)
            if self.log:
                self.log(f"unfolded {len(self.unfolded)} BatchNormalization nodes (folded back on export)")
        if self.group_lasso > 0:
            self.lasso = GroupLasso.of(module, groups, self.group_lasso, unfolded_members(self.unfolded, module))

    def after_step(self, lr: float) -> None:
        """After an optimizer step at learning rate `lr`: the group-lasso proximal step."""
        if self.lasso is not None:
            self.lasso.step(lr)

    def metrics(self) -> dict:
        """Entries for the epoch's history: the penalty and the collapsed channels' share."""
        return self.lasso.metrics() if self.lasso is not None else {}

    def finish(self, module) -> None:
        """Fold the unfolded BN nodes back into their layers (before the export)."""
        if self.unfolded:
            fold_batchnorm(module, self.unfolded)
            self.unfolded = []
