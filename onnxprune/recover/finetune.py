"""Fine-tuning a pruned ONNX model in torch (``onnxprune finetune``).

``finetune(model_or_path, data, epochs=E, ...)`` converts the model with
:func:`onnxprune.torch.to_torch`, trains it on labelled data and returns the fine-tuned model as
ONNX (:func:`onnxprune.torch.export_onnx`) in a :class:`FinetuneResult` with one history entry
per epoch.

* Data: ``load_calibration(data, model, samples=None, ...)`` (a ``.npz`` with inputs and labels
  ``y``, or an image folder ``class/xxx.jpg``); labels are required. Each epoch reads the set with
  seed ``seed + epoch``: image folders are reshuffled by that seed, ``.npz``/``.npy`` arrays are
  visited in a permutation drawn from it (batches are gathered by index, one batch in memory).
* Loss: cross-entropy on the first output (flattened to ``[N, classes]``). With ``teacher``
  (the unpruned ONNX model, run through ``to_torch`` in eval mode, no gradients), knowledge
  distillation: ``loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE``.
* Optimizer: SGD with momentum (Nesterov off) or AdamW; the learning rate follows a cosine
  schedule over all steps (``CosineAnnealingLR``, stepped per batch).
* Augmentation (on by default) for ``[N, C, H, W]`` image inputs: random crop with 4-pixel zero
  padding and horizontal flip, done in torch on the batch with a seeded generator; other inputs
  are not augmented.
* BatchNormalization keeps its running statistics (``to_torch`` evaluates BN with its stored
  statistics; its scale and bias are trained), so the exported model needs no BN re-estimation.
* Evaluation on ``val`` (top-1, mean cross-entropy) before training and after every epoch.
* Checkpoints: ``<checkpoint_dir>/last.pt`` after every epoch (module ``state_dict``, optimizer,
  scheduler, epoch, total epochs, torch / CUDA / augmentation RNG states, history), written
  atomically. ``resume=True`` continues from it: the result equals an uninterrupted run with the
  same seed on the same device (data order depends only on ``seed + epoch``; all other randomness
  comes from the saved RNG states). ``--epochs`` must match the checkpoint's (the cosine schedule
  spans them).
* Device: CUDA when ``torch.cuda.is_available()`` (or ``device=...``), else CPU; the module is
  moved back to the CPU for the export.

Multi-GPU (not implemented): the loop would run under ``torchrun --nproc_per_node=G``, call
``torch.distributed.init_process_group("nccl")``, place the module on ``cuda:LOCAL_RANK`` and wrap
it in ``DistributedDataParallel``; each rank would read a disjoint shard of the per-epoch
permutation (``perm[rank::world_size]``, same seed on every rank, so the shards cover the set),
the learning rate would be scaled by the world size (or the per-rank batch divided), validation
metrics would be summed with ``all_reduce``, and only rank 0 would write checkpoints, print and
export the ONNX model; resuming would broadcast rank 0's checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from ..calib import CalibrationData, ModelInput, Preprocess, load_calibration
from ..errors import InputError
from ..graph import atomic_write_bytes, save_model

OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT_NAME = "last.pt"


@dataclass
class FinetuneResult:
    """The fine-tuned model, one history entry per epoch, and the metrics before training."""

    model: onnx.ModelProto
    history: list[dict] = field(default_factory=list)
    initial: dict | None = None
    device: str = "cpu"
    seconds: float = 0.0
    module: object = field(default=None, repr=False)  # the trained torch module (CPU, eval mode)

    def save(self, path) -> Path:
        """Write the model atomically."""
        return save_model(self.model, path)


def _labelled(path, model, preprocess, batch_size, seed, what) -> CalibrationData:
    try:
        data = load_calibration(path, model, samples=None, preprocess=preprocess,
                                batch_size=batch_size, seed=seed)
    except InputError as exc:
        raise InputError(str(exc).replace("--calib", what, 1)) from None
    if not data.labels_available:
        raise InputError(f"{what} {path}: no labels (a .npz needs an array 'y' of class indices; "
                         "an image folder needs class sub-folders)")
    return data


def _epoch_batches(data: CalibrationData, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, labels) of one epoch in an order drawn from `seed`."""
    if data._files:  # image folders: reopened with the seed, which shuffles the files
        data = dataclasses.replace(data, seed=seed, _files=_reshuffled(data._files, seed))
        for feeds, labels in data.batches():
            yield feeds[data.target.name], labels
        return
    x, y = data._arrays
    perm = np.random.default_rng(seed).permutation(data.samples)
    for start in range(0, data.samples, data.batch_size):
        idx = np.sort(perm[start:start + data.batch_size])
        chunk = dataclasses.replace(data, _arrays=(np.asarray(x[idx]), np.asarray(y[idx])), samples=len(idx))
        yield chunk._array_batch(0, len(idx))


def _reshuffled(files, seed):
    files = sorted(files, key=lambda item: (item[1], str(item[0])))
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[i] for i in order]


def _logits(out):
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.reshape(out.shape[0], -1)


def _augment(x, generator, pad: int | None = None):
    """Random crop with `pad`-pixel zero padding (default H/8: the usual 4 pixels on 32x32 images,
    1 on 8x8 ones) and horizontal flip of an [N, C, H, W] batch."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
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


def finetune(model_or_path, data, *, epochs: int, val=None, optimizer: str = "sgd",
             lr: float | None = None, momentum: float = 0.9, weight_decay: float | None = None,
             batch_size: int = 64, teacher=None, kd_alpha: float = 0.5, kd_temperature: float = 4.0,
             augment: bool = True, checkpoint_dir=None, resume: bool = False,
             preprocess: str | Preprocess | None = None, seed: int = 0, device: str | None = None,
             output=None, log: Callable[[str], None] | None = None,
             on_epoch_end: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Fine-tune an ONNX model on labelled `data`; see the module docstring.

    Defaults: lr 0.01 (sgd) / 0.001 (adamw); weight decay 5e-4 (sgd) / 0.01 (adamw). `output`
    writes the ONNX model atomically; `log` receives one line per epoch; `on_epoch_end` gets each
    history entry after its checkpoint is written.
    """
    import torch
    import torch.nn.functional as F

    from ..api import load_and_analyze
    from ..console import progress_bar
    from ..torch import export_onnx, to_torch

    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer}")
    if not 0.0 <= kd_alpha <= 1.0:
        raise InputError(f"--kd-alpha must be in [0, 1], got {kd_alpha}")
    if kd_temperature <= 0:
        raise InputError(f"--kd-temperature must be positive, got {kd_temperature}")
    if lr is None:
        lr = 0.01 if optimizer == "sgd" else 1e-3
    if weight_decay is None:
        weight_decay = 5e-4 if optimizer == "sgd" else 0.01
    if lr <= 0:
        raise InputError(f"--lr must be positive, got {lr}")
    if resume and checkpoint_dir is None:
        raise InputError("--resume needs --checkpoint-dir")
    if data is None:
        raise InputError("finetune needs labelled training data: add --data PATH (.npz with 'y' or an image folder)")

    model = load_and_analyze(model_or_path).model
    inits = {t.name for t in model.graph.initializer}
    if sum(1 for i in model.graph.input if i.name not in inits) != 1:
        raise InputError("finetune supports models with one input")
    train = _labelled(data, model, preprocess, batch_size, seed, "--data")
    val_data = _labelled(val, model, preprocess, batch_size, seed, "--val") if val is not None else None
    target = train.target
    image_input = len(target.shape) == 4 and target.channels_first
    augment = bool(augment and image_input)

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    module = to_torch(model).to(dev)
    module.train()
    teacher_module = None
    if teacher is not None:
        teacher_module = to_torch(teacher).to(dev).eval()
        for p in teacher_module.parameters():
            p.requires_grad_(False)

    params = [p for p in module.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * train.num_batches
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start_epoch = 1
    initial = None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    if resume:
        path = ckpt_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise InputError(f"--resume: no checkpoint {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise InputError(f"--resume: cannot read {path} ({exc})") from None
        if state.get("epochs") != epochs:
            raise InputError(f"--resume: {path} was made for --epochs {state.get('epochs')}, not {epochs}")
        try:
            module.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise InputError(f"--resume: {path} does not fit this model ({str(exc).splitlines()[0]})") from None
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        gen.set_state(state["augment_rng"])
        history = list(state.get("history", []))
        initial = state.get("initial")
        start_epoch = state["epoch"] + 1

    started = time.perf_counter()
    if val_data is not None and start_epoch == 1:
        initial = evaluate(module, val_data, dev)
        if log:
            log(f"epoch 0/{epochs}  val loss {initial['val_loss']:.4f}  val top-1 {initial['val_top1']:.2%}")

    temperature = float(kd_temperature)
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        totals = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
        count = 0
        correct = 0
        with progress_bar(f"epoch {epoch}/{epochs}", total=train.num_batches) as advance:
            for x_np, y_np in _epoch_batches(train, seed + epoch):
                x = torch.from_numpy(np.ascontiguousarray(x_np)).to(dev)
                y = torch.from_numpy(np.asarray(y_np, dtype=np.int64)).to(dev)
                if augment:
                    x = _augment(x, gen)
                logits = _logits(module(x))
                ce = F.cross_entropy(logits, y)
                if teacher_module is not None:
                    with torch.no_grad():
                        t_logits = _logits(teacher_module(x))
                    kd = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(t_logits / temperature, 1),
                                  reduction="batchmean", log_target=True)
                    loss = kd_alpha * temperature ** 2 * kd + (1 - kd_alpha) * ce
                    totals["kd"] += float(kd.detach()) * len(y)
                else:
                    loss = ce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                totals["loss"] += float(loss.detach()) * len(y)
                totals["ce"] += float(ce.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                count += len(y)
                advance()
        entry = {"epoch": epoch, "train_loss": totals["loss"] / count, "train_ce": totals["ce"] / count,
                 "train_top1": correct / count, "lr": sched.get_last_lr()[0]}
        if teacher_module is not None:
            entry["train_kd"] = totals["kd"] / count
        if val_data is not None:
            entry.update(evaluate(module, val_data, dev))
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if log:
            line = f"epoch {epoch}/{epochs}  loss {entry['train_loss']:.4f}  train top-1 {entry['train_top1']:.2%}"
            if "train_kd" in entry:
                line += f"  kd {entry['train_kd']:.4f}"
            if "val_top1" in entry:
                line += f"  val loss {entry['val_loss']:.4f}  val top-1 {entry['val_top1']:.2%}"
            log(line + f"  lr {entry['lr']:.3g}  {entry['seconds']:.1f}s")
        if ckpt_dir is not None:
            _save_checkpoint(ckpt_dir, {
                "module": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "epochs": epochs, "seed": seed, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "augment_rng": gen.get_state(), "history": history, "initial": initial})
        if on_epoch_end:
            on_epoch_end(entry)

    module = module.cpu().eval()
    x_np, _ = next(_epoch_batches(train, seed))
    example = torch.from_numpy(np.ascontiguousarray(x_np[:1]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "finetuned.onnx"
        export_onnx(module, example, path)
        tuned = onnx.load(str(path))
    result = FinetuneResult(tuned, history, initial, str(dev), time.perf_counter() - started, module)
    if output is not None:
        result.save(output)
    return result
