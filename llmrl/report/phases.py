"""Where the runs' time goes: seconds per phase and efficiency per strategy, as a table and a stacked bar."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from llmrl.phases import PHASES
from llmrl.report.render import Block, Figure, Para, Table, slug
from llmrl.report.runs import Run
from llmrl.strategies import order


def phase_blocks(env: str, runs: list[Run]) -> tuple[list[Block], list[Figure]]:
    """Per strategy, mean seconds per phase over the runs that timed them; nothing when none did."""
    timed = {}
    for strategy in sorted({r.strategy for r in runs}, key=order):
        mine = [r for r in runs if r.strategy == strategy and r.phases]
        if mine:
            timed[strategy] = mine
    if not timed:
        return [], []
    used = [p for p in PHASES if any(r.phases.get(p, 0.0) > 0 for rs in timed.values() for r in rs)]
    means = {s: {p: float(np.mean([r.phases.get(p, 0.0) for r in rs])) for p in used} for s, rs in timed.items()}
    rows = []
    for strategy, rs in timed.items():
        share = np.mean([(r.phases["acting"] + r.phases["env"]) / r.wall_seconds for r in rs])
        rows.append([strategy, str(len(rs)), f"{np.mean([r.wall_seconds for r in rs]):,.1f}", f"{share:.0%}",
                     *(f"{means[strategy][p]:,.1f}" for p in used)])
    figure = Figure(f"{env}: mean seconds per phase of a run", f"phases_{slug(env)}.png", _bars(env, means, used))
    header = ["strategy", "runs", "wall s", "efficiency", *(p.replace("_", " ") for p in used)]
    return [Para("Where a run's time goes (mean seconds per phase; efficiency: the share of the wall time spent "
                 "choosing actions and stepping environments, llmrl/phases.py):"),
            Table(header, rows), figure], [figure]


def _bars(env: str, means: dict[str, dict[str, float]], phases: list[str]) -> bytes:
    """PNG: one horizontal bar per strategy, stacked by phase."""
    fig = MplFigure(figsize=(9.5, 0.6 * len(means) + 1.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    strategies = list(means)
    left = np.zeros(len(strategies))
    colours = dict(zip(PHASES, ("#7f7f7f", "#1f77b4", "#bcbd22", "#ff7f0e", "#9467bd", "#2ca02c", "#d62728",
                                "#17becf"), strict=True))
    for phase in phases:
        widths = np.array([means[s][phase] for s in strategies])
        ax.barh(strategies, widths, left=left, color=colours[phase], label=phase)
        left += widths
    ax.invert_yaxis()
    ax.set(title=env, xlabel="seconds (mean over runs)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
