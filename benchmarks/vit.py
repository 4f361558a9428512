"""ViT-S/16 on ONNX Runtime CPU before and after pruning 50 % of the attention heads and MLP width.

What it measures
----------------
A ViT-S/16 layout (224x224 images, patch 16 -> 197 tokens with the class token, width 384,
6 heads of 64, MLP 1536, 12 pre-LN blocks, 1000 classes; `TinyViT` of ``tests/transformer_zoo.py``
with these sizes, seeded random weights) is exported with the TorchScript exporter (opset 17,
dynamic batch, fixed image size so that the MACs count every token) and pruned with
``onnxprune.prune(path, criterion, ratio=0.5)``: every block keeps 3 of its 6 heads and 768 of
its 1536 MLP channels; the residual stream (384, normalized by LayerNorm) is frozen. The pruned
model is verified against the masked reference. MACs come from the report (convolutions and
matrix products, attention's q·kᵀ and softmax·v included). Latency: ONNX Runtime CPU, all graph
optimizations, the models interleaved in ABBA blocks (``onnxprune.bench.compare_latency``),
median of ``--iters`` runs per batch size.

Goal: the pruned model is verified and at least ``--goal`` (default 1.3) times faster at the
median; exit status 1 when missed (unless ``--no-fail``).

``--prune-residual`` also prunes the residual stream (384 -> 192, every LayerNorm normalizing over
the kept channels).

Usage: ``.venv/bin/python benchmarks/vit.py [--iters 30] [--batch 1,4] [--criterion l1]
[--prune-residual]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from transformer_zoo import TinyViT, export_transformer  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.bench import compare_latency  # noqa: E402

VIT_S = dict(dim=384, heads=6, hidden=1536, depth=12, patch=16, classes=1000, max_tokens=197)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--depth", type=int, default=VIT_S["depth"])
    parser.add_argument(
        "--prune-residual",
        action="store_true",
        help="also prune the residual stream (every LayerNorm, projection and embedding)",
    )
    parser.add_argument("--goal", type=float, default=1.3, help="minimum median speedup")
    parser.add_argument("--no-fail", action="store_true")
    return parser.parse_args(argv)


def export_vit_s(path: Path, depth: int = VIT_S["depth"]) -> Path:
    """Export the seeded ViT-S/16 (TorchScript, dynamic batch, 224x224) to `path`."""
    torch.manual_seed(0)
    module = TinyViT(**{**VIT_S, "depth": depth}).eval()
    return export_transformer(
        "vit", path, dynamo=False, module=module, x=torch.randn(1, 3, 224, 224), dynamic_sequence=False
    )


def build_and_prune(folder: Path, args) -> tuple[onnx.ModelProto, onnxprune.api.PruneResult]:
    """Export the ViT-S/16 and prune it; returns the original model and the result."""
    path = export_vit_s(folder / "vit_s16.onnx", args.depth)
    result = onnxprune.prune(
        path,
        criterion=args.criterion,
        ratio=args.ratio,
        input_shapes={"input": (1, 3, 224, 224)},
        prune_residual=args.prune_residual,
    )
    return onnx.load(str(path)), result  # with its external data, while the folder exists


def kept_heads(result) -> list[str]:
    """'kept/heads' per attention group (the groups whose channels are heads)."""
    return [
        f"{g['kept']}/{g['channels']}"
        for g in result.report["groups"]
        if g["channels"] == VIT_S["heads"] and g.get("frozen") is None
    ]


def main(argv=None) -> int:
    """Print the table; non-zero exit when the goal is missed."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        original, result = build_and_prune(Path(tmp), args)
    report = result.report
    before, after = report["before"], report["after"]
    residual = "residual stream pruned" if args.prune_residual else "residual stream frozen"
    print(
        f"ViT-S/16 depth {args.depth}, {args.criterion}, ratio {args.ratio}, {residual}: heads kept per block "
        f"{', '.join(kept_heads(result))}; verified: {report['verification']['ok']}"
    )
    print(
        f"MACs   {before['macs'] / 1e9:.3f} G -> {after['macs'] / 1e9:.3f} G  "
        f"(x{before['macs'] / after['macs']:.2f} fewer)"
    )
    print(f"params {before['params'] / 1e6:.2f} M -> {after['params'] / 1e6:.2f} M")
    print(f"{'batch':>5} {'before ms':>10} {'after ms':>10} {'speedup':>8} {'MACs x':>7}")
    worst = float("inf")
    for batch in [int(b) for b in args.batch.split(",")]:
        feeds = {"input": np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)}
        stats = compare_latency([original, result.model], feeds, warmup=3, iters=args.iters)
        speedup = stats[0].median_ms / stats[1].median_ms
        worst = min(worst, speedup)
        print(
            f"{batch:>5} {stats[0].median_ms:>10.2f} {stats[1].median_ms:>10.2f} {speedup:>8.2f} "
            f"{before['macs'] / after['macs']:>7.2f}"
        )
    ok = report["verification"]["ok"] and worst >= args.goal
    print(f"goal: verified and median speedup >= {args.goal}: {'met' if ok else 'MISSED'}")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
