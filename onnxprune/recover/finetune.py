"""Fine-tuning a pruned ONNX model in torch (``onnxprune finetune``).

``finetune(model_or_path, data, epochs=E, ...)`` converts the model with
:func:`onnxprune.torch.to_torch`, trains it on labelled data and returns a :class:`FinetuneResult`
with one history entry per epoch. Its ONNX model is made on first use: the trained values written
back into the graph the module was converted from (:mod:`onnxprune.torch.writeback`: the same
nodes, tensor names and opset, so the analysis, the plan file's names and any shape arithmetic stay
as they were), or, only when the trained module no longer fits that graph, a torch export
(:func:`onnxprune.torch.export_onnx`). A torch export re-traces the graph, and its Reshape targets
become long run-time shape chains that the analysis cannot always map (the last stage of the shared
ResNet-20 analysed to 336 prunable channels instead of 400 after an export).

* Data: ``load_calibration(data, model, samples=None, ...)`` (a ``.npz`` with inputs and labels
  ``y``, or an image folder ``class/xxx.jpg``); labels are required. Each epoch reads the set with
  seed ``seed + epoch``: image folders are reshuffled by that seed, ``.npz``/``.npy`` arrays are
  visited in a permutation drawn from it (batches are gathered by index, one batch in memory).
* Loss: cross-entropy on the first output (flattened to ``[N, classes]``). With ``teacher``
  (the unpruned ONNX model, run through ``to_torch`` in eval mode, no gradients), knowledge
  distillation: ``loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE``.
* Optimizer: SGD with momentum (Nesterov off) or AdamW; the learning rate follows a cosine
  schedule over all steps (``CosineAnnealingLR``, stepped per batch). Gradients are clipped to a
  global L2 norm of 1 by default: exported models usually have BatchNormalization folded into the
  convolutions, and without normalization SGD at lr 0.01 blows up within ten steps on the CIFAR
  ResNets (loss 0.5 -> NaN); clipped, it trains (a run that puts BN back, ``--unfold-bn`` or
  ``--reinit``, clips at 5 by default: `Practices.default_clip_grad`). A non-finite loss stops
  the run with a clear error (exit 4) instead of writing a broken model.
* Augmentation (on by default) for ``[N, C, H, W]`` image inputs: random crop with 4-pixel zero
  padding and horizontal flip, done in torch on the batch with a seeded generator; other inputs
  are not augmented.
* BatchNormalization keeps its running statistics (``to_torch`` evaluates BN with its stored
  statistics; its scale and bias are trained), so the exported model needs no BN re-estimation.
* Practices (:mod:`.practices`): ``--unfold-bn`` puts folded BNs back for training (batch
  statistics) and folds them on export; ``--reinit`` trains the architecture from scratch;
  ``--group-lasso λ`` pushes whole channel groups to zero. Checkpoints record them.
* Evaluation on ``val`` (top-1, mean cross-entropy) before training and after every epoch.
* Checkpoints: ``<checkpoint_dir>/last.pt`` after every epoch (module ``state_dict``, optimizer,
  scheduler, epoch, total epochs, torch / CUDA / augmentation RNG states, history), written
  atomically. ``resume=True`` continues from it: the result equals an uninterrupted run with the
  same seed on the same device (data order depends only on ``seed + epoch``; all other randomness
  comes from the saved RNG states). ``--epochs`` must match the checkpoint's (the cosine schedule
  spans them).
* Device: CUDA when ``torch.cuda.is_available()`` (or ``device=...``), else CPU; the module is
  moved back to the CPU for the export.

Multi-GPU / multi-node: run the same command under ``torchrun`` (see :mod:`.distributed`)::

    torchrun --nproc_per_node=4 -m onnxprune finetune pruned.onnx --data train/ --epochs 30

Each process trains a replica wrapped in ``DistributedDataParallel`` (NCCL on GPUs, one GPU per
``LOCAL_RANK``; gloo on CPUs). ``--batch-size`` stays the *global* batch: every global batch of the
single-process run is split across the ranks (rank r reads samples r, r + W, r + 2W, … of it, and
the augmentation parameters are drawn for the whole batch from the same seeded generator on every
rank), so W processes compute the same steps as one process, up to float summation order. The
batch size must be divisible by the world size. Training metrics are summed over ranks; only rank 0
evaluates, prints, writes checkpoints and the ONNX model; ``--resume`` reads the checkpoint on
every rank (keep ``--checkpoint-dir`` on a shared file system for multi-node runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import InputError, TrainingDivergedError
from onnxprune.measure.calibration import (
    CalibrationData,
    Preprocess,
    load_calibration,
)
from onnxprune.model.io import atomic_write_bytes, save_model
from onnxprune.recover.distributed import (
    Shard,
    pick_device,
    start,
    stop,
    sum_over_ranks,
    wrap,
)
from onnxprune.recover.practices import Practices

OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT_NAME = "last.pt"


@dataclass
class FinetuneResult:
    """The fine-tuned model, one history entry per epoch, and the metrics before training.

    `model` is made on first use (nothing is exported for a caller that only needs `module`): the
    trained values written back into `source`, the graph `module` was converted from, else
    :meth:`exported`."""

    history: list[dict] = field(default_factory=list)
    initial: dict | None = None
    device: str = "cpu"
    seconds: float = 0.0
    module: object = field(default=None, repr=False)  # the trained torch module (CPU, eval mode)
    rank: int = 0  # the data-parallel rank of this process (0 outside torchrun)
    source: onnx.ModelProto | None = field(default=None, repr=False)  # the graph `module` was converted from
    example: Any = field(default=None, repr=False)  # one input batch (numpy) for the torch export
    _model: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def model(self) -> onnx.ModelProto:
        """The fine-tuned ONNX model: `source` holding the trained weights under their own names,
        or the torch export when the module does not fit `source` (made once, on first use)."""
        if self._model is None:
            from onnxprune.torch.writeback import written_back

            model = written_back(self.source, self.module) if self.source is not None else None
            self._model = model if model is not None else self.exported()
        return self._model

    def exported(self) -> onnx.ModelProto:
        """The trained module exported through torch (a fresh, re-traced graph)."""
        return _export(self.module, self.example)

    def save(self, path) -> Path:
        """Write the model atomically."""
        return save_model(self.model, path)


def _labelled(path, model, preprocess, batch_size, seed, what) -> CalibrationData:
    try:
        data = load_calibration(path, model, samples=None, preprocess=preprocess, batch_size=batch_size, seed=seed)
    except InputError as exc:
        raise InputError(exc.template.replace("{calib}", what, 1), parameter=exc.parameter) from None
    if not data.labels_available:
        raise InputError(
            f"{what} {path}: no labels (a .npz needs an array 'y' of class indices; "
            "an image folder needs class sub-folders)"
        )
    return data


#: the shard of a run without data parallelism
SINGLE_PROCESS = Shard()


def _epoch_batches(data: CalibrationData, seed: int, shard: Shard = SINGLE_PROCESS):
    """(inputs, labels, global batch size) of one epoch in an order drawn from `seed`.

    Each global batch of `data.batch_size` samples is split across the workers of `shard`; only
    this rank's part is read. With several workers, a last batch smaller than the world is skipped.
    """
    if data._files:  # image folders: reshuffled by the epoch seed
        files = _reshuffled(data._files, seed)
        for start in range(0, len(files), data.batch_size):
            chosen = files[start : start + data.batch_size]
            if len(chosen) >= shard.world:
                part = shard.part(chosen)
                yield (
                    *dataclasses.replace(data, _files=part, samples=len(part))._files_batch(0, len(part)),
                    len(chosen),
                )
        return
    assert data._arrays is not None, "a calibration set reads either image files or arrays"
    x, y = data._arrays
    assert y is not None, "fine-tuning data is labelled (`_labelled`)"
    perm = np.random.default_rng(seed).permutation(data.samples)
    for start in range(0, data.samples, data.batch_size):
        idx = np.sort(perm[start : start + data.batch_size])
        if len(idx) >= shard.world:
            part = shard.part(idx)
            chunk = dataclasses.replace(data, _arrays=(np.asarray(x[part]), np.asarray(y[part])), samples=len(part))
            yield (*chunk._array_batch(0, len(part)), len(idx))


def _reshuffled(files, seed):
    files = sorted(files, key=lambda item: (item[1], str(item[0])))
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[i] for i in order]


def _logits(out):
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.reshape(out.shape[0], -1)


def augment_batch(x, generator, shard: Shard = SINGLE_PROCESS, global_n: int | None = None, pad: int | None = None):
    """Random crop with `pad`-pixel zero padding (default H/8: the usual 4 pixels on 32x32 images,
    1 on 8x8 ones) and horizontal flip of an [N, C, H, W] batch.

    The offsets and flips are drawn for the whole global batch of `global_n` samples, and this
    rank's part of them is applied, so sharded runs augment exactly like one process.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    total = n if global_n is None else global_n
    pad = max(1, h // 8) if pad is None else pad
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = shard.part(torch.randint(0, 2 * pad + 1, (total,), generator=generator)).to(x.device)
    ox = shard.part(torch.randint(0, 2 * pad + 1, (total,), generator=generator)).to(x.device)
    flip = shard.part(torch.rand(total, generator=generator) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols[None, :], cols[None, :]) + ox[:, None]
    rows = torch.arange(h, device=x.device)[None, :] + oy[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def evaluate(module, data: CalibrationData, device) -> dict:
    """Top-1 accuracy and mean cross-entropy of `module` on a labelled set."""
    import torch
    import torch.nn.functional as F

    module.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for feeds, labels in data.batches():
            x = torch.from_numpy(feeds[data.target.name]).to(device)
            y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
            logits = _logits(module(x))
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    module.train()
    return {"val_loss": loss / count, "val_top1": correct / count}


def _save_checkpoint(directory: Path, state: dict) -> None:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(directory / CHECKPOINT_NAME, buffer.getvalue())


@dataclass
class _Settings:
    """Validated hyper-parameters of one fine-tuning run."""

    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    kd_alpha: float
    kd_temperature: float
    clip_grad: float = 1.0

    @classmethod
    def check(cls, epochs, optimizer, lr, momentum, weight_decay, kd_alpha, kd_temperature, clip_grad=1.0) -> _Settings:
        """The settings with defaults filled in, or an InputError naming the bad option."""
        if epochs < 1:
            raise InputError(f"{{epochs}} must be at least 1, got {epochs}", parameter="epochs")
        if optimizer not in OPTIMIZERS:
            raise InputError(
                f"{{optimizer}} must be one of {', '.join(OPTIMIZERS)}, got {optimizer}", parameter="optimizer"
            )
        if not 0.0 <= kd_alpha <= 1.0:
            raise InputError(f"{{kd_alpha}} must be in [0, 1], got {kd_alpha}", parameter="kd_alpha")
        if kd_temperature <= 0:
            raise InputError(f"{{kd_temperature}} must be positive, got {kd_temperature}", parameter="kd_temperature")
        lr = (0.01 if optimizer == "sgd" else 1e-3) if lr is None else lr
        if lr <= 0:
            raise InputError(f"{{lr}} must be positive, got {lr}", parameter="lr")
        if weight_decay is None:
            weight_decay = 5e-4 if optimizer == "sgd" else 0.01
        if clip_grad < 0:
            raise InputError(f"{{clip_grad}} must be 0 (off) or positive, got {clip_grad}", parameter="clip_grad")
        return cls(epochs, optimizer, lr, momentum, weight_decay, kd_alpha, float(kd_temperature), float(clip_grad))

    def optimizer_for(self, params):
        """SGD with momentum or AdamW over `params`."""
        import torch

        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class _Run:
    """The mutable state of a fine-tuning run (what a checkpoint holds)."""

    # torch objects (torch is imported lazily, so they are typed Any)
    module: Any
    opt: Any
    sched: Any
    gen: Any
    history: list = field(default_factory=list)
    initial: dict | None = None
    start_epoch: int = 1
    practices: Practices = field(default_factory=Practices)

    @classmethod
    def begin(cls, module, settings: _Settings, steps: int, seed: int) -> _Run:
        """A fresh run: the optimizer over the trainable parameters, a cosine schedule over `steps`
        batches, and the augmentation generator seeded with `seed`."""
        import torch

        opt = settings.optimizer_for([p for p in module.parameters() if p.requires_grad])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return cls(module, opt, sched, torch.Generator().manual_seed(seed))

    def state(self, epoch: int, epochs: int, seed: int, module) -> dict:
        """The checkpoint after `epoch`."""
        import torch

        return {
            "module": module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch,
            "epochs": epochs,
            "seed": seed,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "augment_rng": self.gen.get_state(),
            "history": self.history,
            "initial": self.initial,
            "practices": self.practices.describe(),
        }

    def restore(self, path: Path, epochs: int, module) -> None:
        """Continue from the checkpoint at `path` (an InputError if it does not fit)."""
        import torch

        if not path.is_file():
            raise InputError(f"{{resume}}: no checkpoint {path}", parameter="resume")
        try:
            state = torch.load(
                path, map_location="cpu", weights_only=True
            )  # tensors and plain data only: never runs code
        except Exception as exc:
            raise InputError(f"{{resume}}: cannot read {path} ({exc})", parameter="resume") from None
        if state.get("epochs") != epochs:
            raise InputError(
                f"{{resume}}: {path} was made for {{epochs}} {state.get('epochs')}, not {epochs}", parameter="resume"
            )
        self.practices.check_checkpoint(state, path)
        try:
            module.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise InputError(
                f"{{resume}}: {path} does not fit this model ({str(exc).splitlines()[0]})", parameter="resume"
            ) from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.gen.set_state(state["augment_rng"])
        self.history = list(state.get("history", []))
        self.initial = state.get("initial")
        self.start_epoch = state["epoch"] + 1


def _teacher_module(teacher, device):
    """The teacher ONNX model as a frozen torch module in eval mode (None without a teacher)."""
    from onnxprune.torch import to_torch

    if teacher is None:
        return None
    module = to_torch(teacher).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _loss(logits, y, t_logits, settings: _Settings):
    """(loss, cross-entropy, distillation term or None) of one batch."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, y)
    if t_logits is None:
        return ce, ce, None
    temperature = settings.kd_temperature
    kd = F.kl_div(
        F.log_softmax(logits / temperature, 1),
        F.log_softmax(t_logits / temperature, 1),
        reduction="batchmean",
        log_target=True,
    )
    return settings.kd_alpha * temperature**2 * kd + (1 - settings.kd_alpha) * ce, ce, kd


def _train_epoch(
    run: _Run,
    trainer,
    teacher,
    train: CalibrationData,
    epoch: int,
    settings: _Settings,
    augment: bool,
    seed: int,
    shard: Shard,
    device,
) -> dict:
    """One epoch over this rank's part of every batch; the metrics summed over all ranks."""
    import torch

    from onnxprune.report.console import progress_bar

    totals = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "correct": 0.0, "count": 0.0}
    bar = (
        progress_bar(f"epoch {epoch}/{settings.epochs}", total=train.num_batches)
        if shard.main
        else contextlib.nullcontext(lambda steps=1: None)
    )
    with bar as advance:
        for x_np, y_np, global_n in _epoch_batches(train, seed + epoch, shard):
            x = torch.from_numpy(np.ascontiguousarray(x_np)).to(device)
            y = torch.from_numpy(np.asarray(y_np, dtype=np.int64)).to(device)
            if augment:
                x = augment_batch(x, run.gen, shard, global_n)
            loss, ce, kd, logits = _train_step(run, trainer, teacher, x, y, epoch, settings)
            n = len(y)
            totals["loss"] += float(loss.detach()) * n
            totals["ce"] += float(ce.detach()) * n
            totals["kd"] += float(kd.detach()) * n if kd is not None else 0.0
            totals["correct"] += int((logits.detach().argmax(1) == y).sum())
            totals["count"] += n
            advance()
    totals = sum_over_ranks(totals, shard, device)
    count = totals["count"]
    entry = {
        "epoch": epoch,
        "train_loss": totals["loss"] / count,
        "train_ce": totals["ce"] / count,
        "train_top1": totals["correct"] / count,
        "lr": run.sched.get_last_lr()[0],
    }
    if teacher is not None:
        entry["train_kd"] = totals["kd"] / count
    return entry


def _train_step(run: _Run, trainer, teacher, x, y, epoch: int, settings: _Settings):
    """One optimizer step on a batch: (loss, ce, kd, logits); TrainingDivergedError on a
    non-finite loss."""
    import torch

    logits = _logits(trainer(x))
    with torch.no_grad():
        t_logits = _logits(teacher(x)) if teacher is not None else None
    loss, ce, kd = _loss(logits, y, t_logits, settings)
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"fine-tuning diverged in epoch {epoch} (loss {float(loss.detach())}); lower --lr "
            f"(now {settings.lr:g}) or --clip-grad (now {settings.clip_grad:g}); nothing was written"
        )
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if settings.clip_grad:
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), settings.clip_grad)
    run.opt.step()
    run.practices.after_step(run.sched.get_last_lr()[0])
    run.sched.step()
    return loss, ce, kd, logits


def _epoch_line(entry: dict, epochs: int) -> str:
    line = f"epoch {entry['epoch']}/{epochs}  loss {entry['train_loss']:.4f}  train top-1 {entry['train_top1']:.2%}"
    if "train_kd" in entry:
        line += f"  kd {entry['train_kd']:.4f}"
    if "lasso_collapsed" in entry:
        line += f"  collapsed {entry['lasso_collapsed']:.1%}"
    if "val_top1" in entry:
        line += f"  val loss {entry['val_loss']:.4f}  val top-1 {entry['val_top1']:.2%}"
    return line + f"  lr {entry['lr']:.3g}  {entry['seconds']:.1f}s"


def _example(train: CalibrationData) -> np.ndarray:
    """The first training input (a batch of one), the example of a torch export."""
    x_np, _ = train._files_batch(0, 1) if train._files else train._array_batch(0, 1)
    return np.ascontiguousarray(x_np[:1])


def _export(module, x_np: np.ndarray) -> onnx.ModelProto:
    """The trained module (CPU, eval mode) exported to ONNX with a real input `x_np` as the example."""
    import torch

    from onnxprune.torch import export_onnx

    example = torch.from_numpy(x_np)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "finetuned.onnx"
        export_onnx(module, example, path)
        return onnx.load(str(path))


@dataclass
class _Inputs:
    """The checked model and its labelled training and validation sets."""

    model: onnx.ModelProto
    train: CalibrationData
    val: CalibrationData | None
    augment: bool  # asked for, and the input is an [N, C, H, W] image batch
    groups: list = field(default_factory=list)  # the model's channel groups (for --group-lasso)


def _inputs(model_or_path, data, val, preprocess, batch_size: int, seed: int, augment: bool) -> _Inputs:
    """Load the model (one input) and the labelled `data` / `val` sets, or an InputError."""
    from onnxprune.analysis.analyze import load_and_analyze

    if data is None:
        raise InputError(
            "finetune needs labelled training data: add {data} PATH (.npz with 'y' or an image folder)",
            parameter="data",
        )
    analysis = load_and_analyze(model_or_path)
    model = analysis.model
    inits = {t.name for t in model.graph.initializer}
    if sum(1 for i in model.graph.input if i.name not in inits) != 1:
        raise InputError("finetune supports models with one input")
    train = _labelled(data, model, preprocess, batch_size, seed, "--data")
    val_data = _labelled(val, model, preprocess, batch_size, seed, "--val") if val is not None else None
    augment = bool(augment and len(train.target.shape) == 4 and train.target.channels_first)
    return _Inputs(model, train, val_data, augment, analysis.groups)


def _initial_evaluation(module, val: CalibrationData, device, epochs: int, log) -> dict:
    """The validation metrics before training ("epoch 0"), logged."""
    initial = evaluate(module, val, device)
    if log:
        log(f"epoch 0/{epochs}  val loss {initial['val_loss']:.4f}  val top-1 {initial['val_top1']:.2%}")
    return initial


def _epoch(
    run: _Run, trainer, teacher, inputs: _Inputs, epoch: int, settings: _Settings, seed: int, shard: Shard, device
) -> dict:
    """One training epoch, then (rank 0) its validation metrics: the epoch's history entry."""
    t0 = time.perf_counter()
    entry = _train_epoch(run, trainer, teacher, inputs.train, epoch, settings, inputs.augment, seed, shard, device)
    entry.update(run.practices.metrics())
    if inputs.val is not None and shard.main:
        entry.update(evaluate(run.module, inputs.val, device))
    entry["seconds"] = time.perf_counter() - t0
    return entry


def _finish(module, inputs: _Inputs, run: _Run, device: str, seconds: float, shard: Shard, output) -> FinetuneResult:
    """The result (its ONNX model written to `output` by rank 0)."""
    module = module.cpu().eval()
    run.practices.finish(module)
    result = FinetuneResult(
        run.history, run.initial, device, seconds, module, shard.rank, inputs.model, _example(inputs.train)
    )
    if output is not None and shard.main:
        result.save(output)
    return result


@dataclass
class _EpochLoop:
    """The epochs of a fine-tuning run: train, log, checkpoint (rank 0), report each entry."""

    trainer: Any
    teacher: Any
    module: Any
    checkpoint_dir: Path | None
    log: Callable[[str], None] | None
    on_epoch_end: Callable[[dict], None] | None

    def run(self, run: _Run, inputs: _Inputs, settings: _Settings, seed: int, shard: Shard, device) -> None:
        """Every epoch from `run.start_epoch` to `settings.epochs`; entries go to `run.history`."""
        epochs = settings.epochs
        for epoch in range(run.start_epoch, epochs + 1):
            entry = _epoch(run, self.trainer, self.teacher, inputs, epoch, settings, seed, shard, device)
            run.history.append(entry)
            if self.log:
                self.log(_epoch_line(entry, epochs))
            if self.checkpoint_dir is not None and shard.main:
                _save_checkpoint(self.checkpoint_dir, run.state(epoch, epochs, seed, self.module))
            if self.on_epoch_end:
                self.on_epoch_end(entry)


def _prepared_module(inputs: _Inputs, practices: Practices, log, device):
    """The model as a torch module (training mode, on `device`) with the practices applied."""
    from onnxprune.torch import to_torch

    module = to_torch(inputs.model)
    practices.log = log
    practices.prepare(module, inputs.model, inputs.train, inputs.groups)
    return module.to(device).train()


def finetune(
    model_or_path,
    data,
    *,
    epochs: int,
    val=None,
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    batch_size: int = 64,
    teacher=None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 4.0,
    augment: bool = True,
    checkpoint_dir=None,
    resume: bool = False,
    preprocess: str | Preprocess | None = None,
    seed: int = 0,
    device: str | None = None,
    output=None,
    log: Callable[[str], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    clip_grad: float | None = None,
    practices: Practices | None = None,
) -> FinetuneResult:
    """Fine-tune an ONNX model on labelled `data` (see the module docstring). Defaults: lr 0.01
    (sgd) / 0.001 (adamw); weight decay 5e-4 (sgd) / 0.01 (adamw); gradients clipped to a global
    L2 norm of `clip_grad` (0: off; default `Practices.default_clip_grad`). `output` writes the
    ONNX model atomically; `log` gets one line per epoch, `on_epoch_end` each history entry after
    its checkpoint; `practices`: ``--unfold-bn``, ``--reinit``, ``--group-lasso``
    (:mod:`.practices`). Under ``torchrun`` only rank 0 logs and writes (the result's ``rank``)."""
    import torch

    practices = practices or Practices()
    clip = practices.default_clip_grad if clip_grad is None else clip_grad
    settings = _Settings.check(epochs, optimizer, lr, momentum, weight_decay, kd_alpha, kd_temperature, clip)
    if resume and checkpoint_dir is None:
        raise InputError("{resume} needs {checkpoint_dir}", parameter="resume")
    inputs = _inputs(model_or_path, data, val, preprocess, batch_size, seed, augment)
    dev = pick_device(device)
    shard = start(dev, batch_size)
    try:
        torch.manual_seed(seed)
        module = _prepared_module(inputs, practices, log if shard.main else None, dev)
        teacher_module = _teacher_module(teacher, dev)
        run = _Run.begin(module, settings, epochs * inputs.train.num_batches, seed)
        run.practices = practices
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume and ckpt_dir is not None:  # (resume without checkpoint_dir was refused above)
            run.restore(ckpt_dir / CHECKPOINT_NAME, epochs, module)
        log, started = (log if shard.main else None), time.perf_counter()
        if inputs.val is not None and run.start_epoch == 1 and shard.main:
            run.initial = _initial_evaluation(module, inputs.val, dev, epochs, log)
        trainer = wrap(module, shard, dev)
        loop = _EpochLoop(trainer, teacher_module, module, ckpt_dir, log, on_epoch_end)
        loop.run(run, inputs, settings, seed, shard, dev)
        return _finish(module, inputs, run, str(dev), time.perf_counter() - started, shard, output)
    finally:
        stop(shard)
