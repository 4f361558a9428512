"""Tiny transformers written in torch, exported with both exporters (dynamic batch and sequence).

* ``vit``: patch-embedding Conv (4x4, stride 4), a class token, a learned position embedding
  sliced to the token count (so any image size that is a multiple of 4 works), 2 pre-LN blocks
  with 4 heads and a *fused* q/k/v Linear (timm style: ``qkv -> reshape(N, T, 3, H, D) ->
  permute(2, 0, 3, 1, 4)``), GELU MLP, LayerNorm, head on the class token. Input
  ``[N, 3, S, S]``; the sequence length is ``(S / 4)² + 1``.
* ``vit_sdpa``: the same with ``F.scaled_dot_product_attention`` instead of the written-out
  ``softmax(q kᵀ / √D) v``.
* ``bert``: token + position embeddings, 2 post-LN encoder blocks with 4 heads and *separate*
  q/k/v Linears (``view(N, T, H, D).transpose(1, 2)``), GELU MLP, the hidden states as output.
  Input token ids ``[N, T]`` (int64). ``bert_cls``: the same with a pooler and a 3-class
  classifier on the first token (the residual stream then reaches no graph output).

``export_transformer(name, path, dynamo)`` exports with batch and sequence (image size for the
ViT) dynamic: ``dynamic_axes`` for TorchScript (opset 17), ``dynamic_shapes`` for dynamo.
"""

from __future__ import annotations

import math
import pathlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

EMBED, HEADS, MLP, BLOCKS, VOCAB = 32, 4, 64, 2, 50


class Attention(nn.Module):
    """Multi-head self-attention written out; `fused` = one q/k/v Linear (ViT) or three (BERT)."""

    def __init__(self, dim: int = EMBED, heads: int = HEADS, fused: bool = True, sdpa: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.fused, self.sdpa = heads, dim // heads, fused, sdpa
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        """q, k, v as [N, H, T, D]."""
        n, t, _ = x.shape
        if self.fused:
            qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv.unbind(0)
        return [layer(x).view(n, t, self.heads, self.head_dim).transpose(1, 2) for layer in (self.q, self.k, self.v)]

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.split(x)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, self.heads * self.head_dim))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int = EMBED, hidden: int = MLP):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A transformer encoder block: pre-LN (ViT) or post-LN (BERT)."""

    def __init__(
        self, pre_norm: bool, fused: bool, sdpa: bool = False, dim: int = EMBED, heads: int = HEADS, hidden: int = MLP
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = Attention(dim, heads, fused=fused, sdpa=sdpa), Mlp(dim, hidden)

    def forward(self, x):
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-LN blocks, LayerNorm, head (the
    defaults are the test model; `benchmarks/vit.py` builds a ViT-S/16 from the same class)."""

    def __init__(
        self,
        sdpa: bool = False,
        classes: int = 10,
        max_tokens: int = 65,
        dim: int = EMBED,
        heads: int = HEADS,
        hidden: int = MLP,
        depth: int = BLOCKS,
        patch: int = 4,
    ):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, max_tokens, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(True, True, sdpa, dim, heads, hidden) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        return self.head(self.norm(self.blocks(x))[:, 0])


class TinyBert(nn.Module):
    """Token and position embeddings, LayerNorm, 2 post-LN encoder blocks; hidden states out, or
    with `classes` a pooler (tanh Linear on the first token) and a classifier."""

    def __init__(self, max_tokens: int = 64, classes: int = 0):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, EMBED), nn.Embedding(max_tokens, EMBED)
        self.norm = nn.LayerNorm(EMBED)
        self.blocks = nn.Sequential(*[Block(False, fused=False) for _ in range(BLOCKS)])
        self.pooler = nn.Linear(EMBED, EMBED) if classes else None
        self.classifier = nn.Linear(EMBED, classes) if classes else None

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.blocks(self.norm(self.tokens(ids) + self.positions(positions)))
        if self.classifier is None:
            return hidden
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights with LayerNorm affine parameters away from 1/0 (so masking shows)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return module.eval()


def example_input(name: str, batch: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """An input for model `name`: images of side `size` (default 16: 17 tokens) for the ViTs,
    token ids of length `size` (default 12) for BERT."""
    generator = torch.Generator().manual_seed(seed)
    if name.startswith("vit"):
        side = size or 16
        return torch.randn(batch, 3, side, side, generator=generator)
    return torch.randint(0, VOCAB, (batch, size or 12), generator=generator)


def build(name: str, seed: int = 0) -> nn.Module:
    """The seeded module called `name` ('vit', 'vit_sdpa', 'bert', 'bert_cls')."""
    torch.manual_seed(seed)
    module = {
        "vit": lambda: TinyViT(),
        "vit_sdpa": lambda: TinyViT(sdpa=True),
        "bert": lambda: TinyBert(),
        "bert_cls": lambda: TinyBert(classes=3),
    }[name]()
    return _randomize(module, seed + 1)


TRANSFORMERS = ("vit", "vit_sdpa", "bert", "bert_cls")


def export_transformer(
    name: str,
    path,
    dynamo: bool,
    module: nn.Module | None = None,
    x: torch.Tensor | None = None,
    dynamic_sequence: bool = True,
) -> pathlib.Path:
    """Export model `name` (or `module`, traced on `x`) with batch and sequence (image side)
    dynamic, or batch only without `dynamic_sequence`; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module or build(name)
    x = example_input(name) if x is None else x
    vit = name.startswith("vit")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            axes = {0: "batch", 2: "height", 3: "width"} if vit else {0: "batch", 1: "tokens"}
            axes = axes if dynamic_sequence else {0: "batch"}
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes if name == "bert" else {0: "batch"}},
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=64)
            if not dynamic_sequence:
                shapes = ({0: batch},)
            elif vit:
                side = torch.export.Dim("side", min=1, max=8)
                shapes = ({0: batch, 2: 4 * side, 3: 4 * side},)
            else:
                shapes = ({0: batch, 1: torch.export.Dim("tokens", min=2, max=64)},)
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                verbose=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=shapes,
            )
    return path
