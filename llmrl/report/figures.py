"""Learning-curve figures: IQM over seeds with interquartile bands, non-learners as levels."""

from __future__ import annotations

import io

import numpy as np
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llmrl.report.render import num
from llmrl.report.runs import Run
from llmrl.report.stats import Stat, aligned
from llmrl.strategies import NAMES

# Hollow markers of decreasing size: curves that coincide (e.g. all at the cap) stay visible.
MARKERS = {"context": ("o", 10), "adapter": ("s", 7), "weights": ("^", 5), "ppo": ("D", 4),
           "ppo-pixels": ("v", 4)}
# One colour per strategy (strict: a new strategy without one fails at import, not as a silent repeat).


COLOURS = dict(zip(NAMES, ("#7f7f7f", "#bcbd22", "#17becf", "#8c564b", "#e377c2",
                                    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"), strict=True))


def plot_curves(env: str, runs: list[Run], stats: list[Stat], score: str) -> bytes:
    """PNG of return vs env steps: learners as IQM lines with IQR bands, non-learners as dashed levels."""
    fig = Figure(figsize=(9.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, no GUI
    ax = fig.add_subplot()
    positive_steps = []
    for stat in stats:
        mine = [r for r in runs if r.strategy == stat.strategy]
        colour = COLOURS.get(stat.strategy)
        if all(len(r.steps) == 1 for r in mine):  # prompt baselines and random: one point at step 0
            # the level in the label: levels that coincide hide each other's lines
            ax.axhline(stat.iqm, ls="--", lw=1.2, color=colour, label=f"{stat.strategy} ({num(stat.iqm)})")
            continue
        grid, values = aligned(mine)
        marker, size = MARKERS.get(stat.strategy, (".", 6))
        line = ax.plot(grid, scipy.stats.trim_mean(values, 0.25, axis=0), marker=marker, ms=size, mfc="none",
                       lw=1.8, color=colour, label=f"{stat.strategy} (IQM of {len(mine)})")[0]
        q1, q3 = np.percentile(values, [25, 75], axis=0)
        ax.fill_between(grid, q1, q3, color=line.get_color(), alpha=0.2, lw=0)
        positive_steps += [s for s in grid if s > 0]
    ax.set(title=env, ylabel=score, xlabel="environment steps")
    if not positive_steps:  # only dashed levels: an env-steps axis would suggest a range that was never run
        ax.set(xticks=[], xlabel="no learning runs on this environment")
    elif max(positive_steps) / min(positive_steps) > 20:
        # PPO's tens of thousands of steps would squeeze edit runs' few thousand against the axis
        ax.set_xscale("symlog", linthresh=min(positive_steps))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
