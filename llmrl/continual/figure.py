"""The stream's score matrix as a heatmap: rows are "after stage i", columns the stages scored."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from llmrl.continual.stream import StreamSummary


def plot_matrix(summary: StreamSummary) -> bytes:
    """PNG of the normalised matrix (raw returns when a stage has no reference), each cell labelled."""
    values = summary.matrix if summary.matrix is not None else summary.raw_matrix
    scale = "normalised score (0 random, 1 reference table)" if summary.matrix is not None else "return"
    t = len(summary.stages)
    fig = Figure(figsize=(1.6 * t + 3, 1.0 * (t + 1) + 1.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto",
                      **({"vmin": 0.0, "vmax": 1.0} if summary.matrix is not None else {}))
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}" if summary.matrix is not None else f"{v:.0f}", ha="center", va="center",
                    color="white" if summary.matrix is not None and v < 0.5 else "black", fontsize="small")
    ax.set_xticks(range(t), [f"{j + 1}: {env}" for j, env in enumerate(summary.stages)], rotation=20, ha="right",
                  fontsize="small")
    ax.set_yticks(range(t + 1), ["untouched"] + [f"after {i}" for i in range(1, t + 1)], fontsize="small")
    ax.set(title=f"{summary.strategy} ({summary.accumulate}), seed {summary.seed}", xlabel="stage scored")
    fig.colorbar(image, ax=ax, label=scale)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
