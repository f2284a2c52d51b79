"""Where the runs' time goes: seconds per phase and efficiency per group of runs, as a table and a stacked bar."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from llmrl.phases import PHASES, STREAM_PHASES, efficiency
from llmrl.report.render import Block, Figure, Para, Table, slug
from llmrl.report.runs import Run
from llmrl.strategies import order

#: One colour per phase of either kind of run (strict: a new phase without one fails at import).
COLOURS = dict(zip(dict.fromkeys(PHASES + STREAM_PHASES),
                   ("#7f7f7f", "#1f77b4", "#bcbd22", "#ff7f0e", "#9467bd", "#2ca02c", "#d62728", "#17becf",
                    "#8c564b", "#e377c2", "#aec7e8"), strict=True))
NOTE = ("mean seconds per phase; efficiency: the share of the wall time spent choosing actions and stepping "
        "environments, llmrl/phases.py")


def phase_blocks(env: str, runs: list[Run]) -> tuple[list[Block], list[Figure]]:
    """Per strategy on one environment, its runs' time by phase; nothing when no run timed its phases."""
    groups = {s: [(r.phases, r.wall_seconds) for r in runs if r.strategy == s and r.phases]
              for s in sorted({r.strategy for r in runs}, key=order)}
    return timing_blocks(f"Where a run's time goes ({NOTE}):", env, f"phases_{slug(env)}.png", groups, PHASES)


def timing_blocks(intro: str, title: str, name: str, groups: dict[str, list[tuple[dict, float]]],
                  phases: tuple[str, ...]) -> tuple[list[Block], list[Figure]]:
    """A table (runs, mean wall seconds, efficiency, mean seconds per phase that took any) and its stacked bars,
    per named group of (phases, wall seconds); nothing when every group is empty."""
    groups = {label: timed for label, timed in groups.items() if timed}
    if not groups:
        return [], []
    used = [p for p in phases if any(t.get(p, 0.0) > 0 for timed in groups.values() for t, _ in timed)]
    means = {label: {p: float(np.mean([t.get(p, 0.0) for t, _ in timed])) for p in used}
             for label, timed in groups.items()}
    rows = [[label, str(len(timed)), f"{np.mean([w for _, w in timed]):,.1f}",
             f"{np.mean([efficiency(t, w) for t, w in timed]):.0%}",
             *(f"{means[label][p]:,.1f}" for p in used)] for label, timed in groups.items()]
    figure = Figure(f"{title}: mean seconds per phase", name, _bars(title, means, used))
    header = ["runs", "wall s", "efficiency", *(p.replace("_", " ") for p in used)]
    return [Para(intro), Table(["strategy", *header], rows), figure], [figure]


def _bars(title: str, means: dict[str, dict[str, float]], phases: list[str]) -> bytes:
    """PNG: one horizontal bar per group, stacked by phase."""
    fig = MplFigure(figsize=(9.5, 0.6 * len(means) + 1.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(means)
    left = np.zeros(len(labels))
    for phase in phases:
        widths = np.array([means[label][phase] for label in labels])
        ax.barh(labels, widths, left=left, color=COLOURS[phase], label=phase)
        left += widths
    ax.invert_yaxis()
    ax.set(title=title, xlabel="seconds (mean over runs)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
