"""Allocation plots (PNG, Agg canvas, no pyplot state): the fraction of output channels each layer
keeps, in network order, and for random-search every candidate's score against its MACs.

They are drawn from the JSON report alone (`report["allocation"]["layers"]` and the search
history), so a saved report can be plotted again later.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from onnxprune.model.io import atomic_write_bytes
from onnxprune.model.nodes import node_label

KEPT_PER_LAYER = "kept_per_layer.png"
RANDOM_SEARCH = "random_search.png"


def kept_per_layer(nodes: Iterable, groups: list, kept: dict) -> list[dict]:
    """One row per producer layer (a node whose weight holds output filters: Conv, Gemm, MatMul…)
    in network order: its channel group, output channels, channels kept and whether the group is
    frozen. `kept` maps group id -> kept channel ids (groups missing from it keep everything)."""
    producers: dict[str, tuple] = {}  # node label -> (group, space)
    for group in groups:
        for member in group.members_with("out"):
            producers.setdefault(member.node, (group, member.space))
    rows = []
    for node in nodes:
        label = node_label(node)
        if label not in producers:
            continue
        group, space = producers[label]
        atoms = group.channel_of[space]
        if group.prunable and group.id in kept:
            mask = np.zeros(group.channels, bool)
            mask[np.asarray(kept[group.id], dtype=np.int64)] = True
            count = int(mask[atoms].sum())
        else:
            count = len(atoms)
        rows.append(
            {
                "layer": label,
                "op": node.op_type,
                "group": group.id,
                "channels": len(atoms),
                "kept": count,
                "fraction": count / len(atoms) if len(atoms) else 1.0,
                "frozen": group.frozen is not None,
            }
        )
    return rows


def save_allocation_plots(report: dict, directory: str | os.PathLike, layers: list[dict] | None = None) -> list[Path]:
    """Write `kept_per_layer.png` (and `random_search.png` after a random search) into `directory`;
    `layers` defaults to the report's `allocation.layers`. Returns the paths written."""
    allocation = report.get("allocation") or {}
    layers = layers if layers is not None else allocation.get("layers")
    if not layers:
        raise ValueError("the report holds no per-layer kept fractions (allocation.layers)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [_save(kept_figure(report, layers), directory / KEPT_PER_LAYER)]
    candidates = [h for h in allocation.get("history", []) if "candidate" in h]
    if allocation.get("strategy") == "random-search" and candidates:
        written.append(_save(search_figure(report, candidates), directory / RANDOM_SEARCH))
    return written


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _title(report: dict) -> str:
    """'random-search allocation, flops target 50% (achieved 49.3%)' or the plain ratio."""
    allocation = report.get("allocation")
    if not allocation:
        options = report.get("options", {})
        scope = options.get("scope", "local")
        return f"ratio {options.get('ratio')} ({scope} scope), criterion {report.get('criterion')}"
    target = allocation.get("target")
    if not target:
        return f"{allocation['strategy']} ratios, criterion {report.get('criterion')}"
    if target["kind"] == "latency":
        goal = f"latency target {target['target']:.3g} ms (achieved {target['achieved']:.3g} ms)"
    else:
        name = "MACs" if target["kind"] == "flops" else "params"
        goal = (
            f"{name} target {target['target'] / target['baseline']:.1%} of the model "
            f"(achieved {target['achieved'] / target['baseline']:.1%})"
        )
    return f"{allocation['strategy']} allocation, {goal}, criterion {report.get('criterion')}"


def _short(label: str, width: int = 38) -> str:
    """A layer name short enough for a tick label: its last path parts."""
    text = label.strip("/")
    if len(text) <= width:
        return text
    parts = text.split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + len(tail) + 1 > width - 1:
            break
        tail = f"{part}/{tail}"
    return "…" + tail[-(width - 1) :]


def kept_figure(report: dict, layers: list[dict]):
    """Bar chart: the fraction of output channels each layer keeps, in network order (frozen layers grey)."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    count = len(layers)
    figure = _figure(max(7.0, 0.24 * count + 2.5), 5.2)
    axes = figure.subplots()
    cmap = colormaps["tab20"]
    group_ids = list(dict.fromkeys(row["group"] for row in layers if not row["frozen"]))
    colors = [
        (0.72, 0.72, 0.72, 1.0) if row["frozen"] else cmap(group_ids.index(row["group"]) % cmap.N) for row in layers
    ]
    x = np.arange(count)
    fractions = [row["fraction"] for row in layers]
    axes.bar(x, fractions, color=colors, edgecolor="black", linewidth=0.3, width=0.8)
    if count <= 60:
        for xi, row in zip(x, layers):
            axes.text(
                xi,
                row["fraction"] + 0.01,
                str(row["kept"]),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90 if count > 24 else 0,
            )
    axes.set_xticks(x)
    axes.set_xticklabels([_short(row["layer"]) for row in layers], rotation=90, fontsize=7 if count <= 60 else 5)
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylim(0, 1.3)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("fraction of output channels kept")
    axes.set_xlabel("layer (network order); one colour per channel group; number on each bar = channels kept")
    axes.grid(True, axis="y", alpha=0.3)
    macs, params = report.get("macs_ratio"), report.get("params_ratio")
    totals = "" if macs is None else f"\nMACs kept {macs:.1%}, parameters kept {params:.1%}"
    axes.set_title(f"Channels kept per layer: {_title(report)}{totals}", fontsize=10)
    if any(row["frozen"] for row in layers):
        axes.legend(
            handles=[Patch(color=(0.72, 0.72, 0.72), label="frozen group (not prunable)")],
            loc="upper right",
            fontsize=8,
            framealpha=0.9,
        )
    figure.tight_layout()
    return figure


def search_figure(report: dict, candidates: list[dict]):
    """Scatter: each random-search candidate's output change against its MACs; the chosen one and
    the uniform shape marked, the MACs target as a line."""
    figure = _figure(7.5, 5.2)
    axes = figure.subplots()
    ylabel, short = score_label((report.get("allocation") or {}).get("search_eval") or "raw")
    flops = np.array([c["flops"] for c in candidates], dtype=float)
    scores = np.array([c["score"] for c in candidates], dtype=float)
    scale, unit = _unit(flops.max() if len(flops) else 1.0)
    axes.scatter(flops / scale, scores, s=22, color="tab:blue", alpha=0.75, label=f"candidates ({len(candidates)})")
    uniform = [c for c in candidates if c.get("shape") == "uniform"]
    if uniform:
        axes.scatter(
            [uniform[0]["flops"] / scale],
            [uniform[0]["score"]],
            s=80,
            facecolors="none",
            edgecolors="black",
            linewidths=1.4,
            label="uniform shape",
            zorder=3,
        )
    chosen = [c for c in candidates if c.get("chosen")]
    if chosen:
        best = chosen[0]
        axes.scatter(
            [best["flops"] / scale],
            [best["score"]],
            s=220,
            marker="*",
            color="tab:red",
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
            label=f"chosen: #{best['candidate']} ({short} {best['score']:.3g})",
        )
    target = (report.get("allocation") or {}).get("target") or {}
    if target.get("kind") == "flops":
        axes.axvline(
            target["target"] / scale,
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label=f"MACs target {target['target'] / scale:.3g}{unit}",
        )
        axes.axvline(target["target"] * 0.98 / scale, color="tab:gray", linestyle=":", linewidth=1, label="target − 2%")
    axes.set_xlabel(f"MACs of the candidate ({unit or 'count'})")
    axes.set_ylabel(f"{ylabel}  (lower is better)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    axes.set_title(f"Random search over {len(candidates)} candidates: {_title(report).split(', ', 1)[-1]}", fontsize=10)
    figure.tight_layout()
    return figure


def score_label(search_eval: str) -> tuple[str, str]:
    """(axis label, short name) of the score random-search ranked by (`--search-eval`)."""
    if search_eval == "reconstruct":
        return "held-out output error after reconstruction", "error"
    if search_eval.startswith("kd-steps:"):
        return f"held-out output error after {search_eval.split(':')[1]} kd steps", "error"
    return "output change  ||y − y0|| / ||y0||", "change"


def _unit(value: float) -> tuple[float, str]:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return size, unit
    return 1.0, ""


def curve_figure(curves: dict[str, list[tuple[float, float]]], title: str, ylabel: str = "top-1"):
    """One line per label through its (seconds, value) points: e.g. top-1 against time of a recovery."""
    figure = _figure(7, 4)
    axes = figure.add_subplot(1, 1, 1)
    for label, points in curves.items():
        xs, ys = zip(*points) if points else ((), ())
        axes.plot(xs, ys, marker="o", label=label)
    axes.set_xlabel("seconds")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def save_curve_plot(curves: dict[str, list[tuple[float, float]]], path: str | os.PathLike, title: str) -> Path:
    """Write `curve_figure(curves, title)` as a PNG."""
    return _save(curve_figure(curves, title), Path(path))
