"""The report of a capacity grid: each method's reliability, generalization and locality against N.

Records of kind ``capacity`` each hold one benchmark cell
(:class:`~llmrl.capacity.bench.CapacityResult`). Per mode (batch, sequential),
method and N the report gives the mean over seeds with the lowest and highest
seed (a grid has few seeds: an IQM over three is their mean), how many seeds
erased well and undid exactly, and one figure per mode with a curve per method.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as Canvas

from llmrl.errors import UsageError
from llmrl.record import RunRecord
from llmrl.report.render import Block, Bullets, Figure, Heading, Para, Table, count, num
from llmrl.report.runs import last_error_line, precision_labels
from llmrl.strategies import METHODS

#: The measurements per cell, in the table's order: (result key, column).
MEASURES = (("reliability", "reliability"), ("generalization", "generalization"), ("locality_kl", "locality KL"),
            ("locality_top1", "locality top-1"), ("reliability_changed", "reliability where changed"),
            ("generalization_fresh", "fresh observations"))
PLOTTED = MEASURES[:3]


def capacity_blocks(records: list[RunRecord], title: str) -> tuple[list[Block], list[Figure], dict]:
    """The report's blocks, its figures and JSON-ready numbers, from capacity records (failed ones included)."""
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    if not done:
        raise UsageError("no finished capacity cells to report")
    suffix, precision = precision_labels(done, "cell", "method")
    cells: dict[tuple[str, str, int], list[dict]] = {}
    for r in done:
        c = r.capacity or {}
        mode = "sequential" if c["sequential"] else "batch"
        label = c["method"] + suffix[r.run_id]
        cells.setdefault((mode, label, c["items"]), []).append(c)
    order = list(METHODS)
    methods = sorted({m for _, m, _ in cells},
                     key=lambda m: (order.index(m.split()[0]) if m.split()[0] in order else 99, m))
    blocks: list[Block] = [
        Heading(1, title),
        Para(f"{count(len(done), 'finished cell')}, {len(failed)} failed. Each cell inserts N items of the pool "
             "(docs/capacity.md) into the default model with one method, in one edit (batch) or one edit per "
             "item (sequential). Figures are the mean over seeds, with the lowest and highest seed in "
             f"brackets; erase and undo count the seeds whose erase was good and whose undo was bit-exact. "
             f"{precision}"),
    ]
    data: dict = {"cells": {}}
    figures = []
    for mode in ("batch", "sequential"):
        keys = sorted((k for k in cells if k[0] == mode), key=lambda k: (methods.index(k[1]), k[2]))
        if not keys:
            continue
        rows = []
        for key in keys:
            runs = cells[key]
            stats = {m: _spread([r[m] for r in runs if r.get(m) is not None]) for m, _ in MEASURES}
            seconds = float(np.mean([r["edit_seconds"] for r in runs]))
            erase = sum(r["erase_ok"] for r in runs)
            undo = sum(r["undo_exact"] for r in runs)
            rows.append([key[1], f"{key[2]:,}", str(len(runs)), *(_cell(stats[m]) for m, _ in MEASURES),
                         f"{seconds:,.1f}", f"{erase}/{len(runs)}", f"{undo}/{len(runs)}"])
            data["cells"][f"{mode}/{key[1]}/{key[2]}"] = {**{m: stats[m] for m, _ in MEASURES},
                                                          "edit_seconds": seconds, "seeds": len(runs),
                                                          "erase_ok": erase, "undo_exact": undo}
        blocks += [Heading(2, f"{mode.capitalize()} editing"),
                   Table(["method", "N", "seeds", *(c for _, c in MEASURES), "edit s (mean)", "erase ok",
                          "undo exact"], rows)]
        figure = Figure(f"{mode} editing: reliability, generalization and locality KL against N",
                        f"capacity_{mode}.png", _plot(mode, {k: v for k, v in cells.items() if k[0] == mode},
                                                      methods))
        figures.append(figure)
        blocks.append(figure)
    if failed:
        blocks += [Heading(2, "Failed cells (excluded)"),
                   Bullets([f"{r.run_id}: {last_error_line(r.error)}" for r in failed])]
    return blocks, figures, data


def _spread(values: list[float]) -> list[float] | None:
    return [float(np.mean(values)), float(min(values)), float(max(values))] if values else None


def _cell(stat: list[float] | None) -> str:
    if stat is None:
        return "-"
    mean, lo, hi = stat
    return f"{num(mean)} [{num(lo)}, {num(hi)}]"


def _plot(mode: str, cells: dict[tuple[str, str, int], list[dict]], methods: list[str]) -> bytes:
    fig = Canvas(figsize=(13, 4), dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, no GUI
    for n, (key, label) in enumerate(PLOTTED, 1):
        ax = fig.add_subplot(1, len(PLOTTED), n)
        for method in methods:
            points = sorted((k[2], np.mean([r[key] for r in v if r[key] is not None]))
                            for k, v in cells.items() if k[1] == method and any(r[key] is not None for r in v))
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set(xscale="log", xlabel="items N", title=label)
        if key == "locality_kl":  # KL >= 0; linear below 1e-3 so that an exact 0 shows
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(-0.02, 1.02)
    fig.axes[0].legend(fontsize="small")
    fig.suptitle(f"{mode} editing")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
