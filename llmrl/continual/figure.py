"""A stream's score matrix as a heatmap: rows are "after stage i", columns the stages scored."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_matrix(values: list[list[float]], stages: list[str], title: str, normalised: bool) -> bytes:
    """PNG of a (T+1) x T matrix (row 0 the untouched model), each cell labelled.

    ``normalised``: 0 is random play and 1 the reference table, and the colours span [0, 1].
    """
    t = len(stages)
    fig = Figure(figsize=(1.6 * t + 3, 1.0 * (t + 1) + 1.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, no GUI
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto", **({"vmin": 0.0, "vmax": 1.0} if normalised else {}))
    low, high = image.get_clim()
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            dark = (v - low) < 0.5 * (high - low) if high > low else True
            ax.text(j, i, f"{v:.2f}" if normalised else f"{v:.0f}", ha="center", va="center",
                    color="white" if dark else "black", fontsize="small")
    ax.set_xticks(range(t), [f"{j + 1}: {env}" for j, env in enumerate(stages)], rotation=20, ha="right",
                  fontsize="small")
    ax.set_yticks(range(t + 1), ["untouched"] + [f"after {i}" for i in range(1, t + 1)], fontsize="small")
    ax.set(title=title, xlabel="stage scored")
    fig.colorbar(image, ax=ax, label="normalised score (0 random, 1 table)" if normalised else "return")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
