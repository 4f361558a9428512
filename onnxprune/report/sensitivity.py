"""The sensitivity study drawn: a PNG of the curves (output change, and top-1 with labels, vs
ratio; one line per group) and a console table. Both read a `measure.sensitivity.SensitivityResult`."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from onnxprune.model.io import atomic_write_bytes


def save_plot(result, path: str | os.PathLike) -> Path:
    """Write `plot_figure(result)` as a PNG (atomically, creating the folder)."""
    buffer = io.BytesIO()
    plot_figure(result).savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_figure(result):
    """A matplotlib Figure (Agg canvas, no pyplot state): output change vs ratio, and top-1 vs ratio
    when labels were available; one line per group, legend with the groups' names."""
    # matplotlib is imported only when plotting
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if result.baseline_top1 is not None else 1
    figure = Figure(figsize=(6.5 * panels + 3.5, 6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for index, group in enumerate(result.groups):
        style = _line_style(index, len(result.groups))
        label = f"{group.id} {group.name} ({group.channels} ch, {group.macs_share:.0%} MACs)"
        axes[0].plot(result.ratios, [p.output_change for p in group.points], label=label, **style)
        if panels == 2:
            axes[1].plot(result.ratios, [100 * p.top1 for p in group.points], **style)
    _decorate(axes, result)
    figure.legend(
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        frameon=False,
        ncol=max(1, math.ceil(len(result.groups) / 28)),
    )
    figure.tight_layout()
    return figure


def _line_style(index: int, count: int) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return {
        "color": cmap(index % cmap.N),
        "linestyle": ("-", "--", ":", "-.")[(index // cmap.N) % 4],
        "marker": "o",
        "markersize": 3.5,
        "linewidth": 1.4,
    }


def _decorate(axes, result) -> None:
    axes[0].set_title(f"Output change ('{result.output}') when one group is pruned")
    axes[0].set_ylabel("relative L2 change  ||y - y0|| / ||y0||")
    if len(axes) == 2:
        axes[1].axhline(
            100 * result.baseline_top1,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"unpruned {result.baseline_top1:.1%}",
        )
        axes[1].set_title("Top-1 accuracy when one group is pruned")
        axes[1].set_ylabel("top-1 (%)")
    for ax in axes:
        ax.set_xlabel("ratio of the group's channels removed")
        ax.grid(True, alpha=0.3)
    axes[0].figure.suptitle(
        f"Sensitivity per group: criterion {result.criterion}, {result.calib_samples} calibration samples", fontsize=11
    )


def summary_table(result, columns: int = 5):
    """A rich Table: one row per group, the output change (and top-1) at up to `columns` ratios."""
    from rich.table import Table

    picks = sorted({int(round(i)) for i in np.linspace(0, len(result.ratios) - 1, min(columns, len(result.ratios)))})
    baseline = "" if result.baseline_top1 is None else f"; top-1 in brackets (unpruned {result.baseline_top1:.1%})"
    table = Table(
        title=f"Output change when each group alone is pruned ({result.criterion}, "
        f"{result.calib_samples} samples{baseline})",
        title_justify="left",
    )
    for name in ("id", "first layer", "channels", "MACs share"):
        table.add_column(name, justify="left" if name in ("id", "first layer") else "right")
    for i in picks:
        table.add_column(f"ratio {result.ratios[i]:g}", justify="right")
    for group in result.groups:
        cells = [_cell(group.points[i]) for i in picks]
        table.add_row(group.id, group.name, str(group.channels), f"{group.macs_share:.1%}", *cells)
    return table


def _cell(point) -> str:
    text = f"{point.output_change:.3f}"
    return text if point.top1 is None else f"{text} [{point.top1:.1%}]"
