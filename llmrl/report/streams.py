"""The report of a continual-stream experiment: forgetting and transfer per strategy and accumulation mode.

A stream experiment's records (kind ``stream``) each carry one stream's
matrices and metrics (:class:`~llmrl.continual.stream.StreamSummary`). Per
(strategy, accumulation mode) the report gives the IQM over seeds, with a 95 %
stratified-bootstrap interval, of ACC, BWT, FWT and forgetting; the
environment steps each stage took to reach its target; the knowledge changes;
the mean matrix as a heatmap; and, for runs that timed them, the seconds per phase.
"""

from __future__ import annotations

import numpy as np

from llmrl.continual.figure import plot_matrix
from llmrl.continual.metrics import normalise, stream_metrics
from llmrl.errors import UsageError
from llmrl.phases import STREAM_PHASES
from llmrl.record import RunRecord
from llmrl.report.phases import NOTE, timing_blocks
from llmrl.report.render import Block, Bullets, Figure, Heading, Para, Table, count, num, slug
from llmrl.report.runs import last_error_line, precision_labels
from llmrl.report.stats import BOOTSTRAP_REPS, BOOTSTRAP_SEED, MIN_RUNS_FOR_IQM, iqm_ci
from llmrl.strategies import order

METRICS = ("acc", "bwt", "fwt", "forgetting", "acc_joint")


def stream_blocks(records: list[RunRecord], title: str) -> tuple[list[Block], list[Figure], dict]:
    """The report's blocks, its figures and JSON-ready numbers, from stream records (failed ones included)."""
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    if not done:
        raise UsageError("no finished stream runs to report")
    stages = done[0].stream["stages"]  # type: ignore[index]
    if any(r.stream["stages"] != stages for r in done):  # type: ignore[index]
        raise UsageError("the records are of different streams; report one stream per results folder")
    normalised = all(r.stream["matrix"] is not None for r in done)  # type: ignore[index]
    suffix, precision = precision_labels(done, "run", "strategy")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(done, key=lambda r: (order(r.strategy), suffix[r.run_id], r.stream["accumulate"], r.seed)):  # type: ignore[index]
        groups.setdefault((r.strategy + suffix[r.run_id], r.stream["accumulate"]), []).append(
            _rescored(r.stream, normalised))

    scale = "normalised (0 random play, 1 the card's table policy)" if normalised else "raw returns"
    blocks: list[Block] = [
        Heading(1, title),
        Para(f"{count(len(done), 'finished stream run')}, {len(failed)} failed, on the stream "
             f"{' → '.join(stages)}. Scores are {scale}. Per strategy and accumulation mode, the IQM over seeds "
             f"with a 95 % stratified-bootstrap interval (rliable, {BOOTSTRAP_REPS:,} resamples, seed "
             f"{BOOTSTRAP_SEED}); * marks fewer than {MIN_RUNS_FOR_IQM} runs (then the plain mean). ACC is the "
             "mean final score over the stages, BWT the mean change of each earlier stage's score from when it "
             "was learned to the end, FWT the mean gain on each stage, before learning it, over the untouched "
             "model, forgetting the mean drop from each earlier stage's best score to its final one "
             "(llmrl/continual/metrics.py gives the definitions and their sources). Joint ACC is the ACC of "
             "the joint upper bound: every card's final items injected at once on the untouched model (with "
             "rebuild, the final row itself). Env steps is the mean number of environment steps a run trained "
             f"over the whole stream, whose feedback budget is {_budget(done[0].config):,}: PPO trains whole "
             f"rollouts of its RL Zoo settings, so its runs can train more than the budget. {precision}"),
    ]
    data: dict = {"stages": stages, "normalised": normalised, "groups": {}}
    rows = []
    for (strategy, accumulate), runs in groups.items():
        cells = {}
        for metric in METRICS:
            values = [r[metric] for r in runs if r[metric] is not None]
            cells[metric] = iqm_ci(np.array(values)) if values else None
        star = "*" if len(runs) < MIN_RUNS_FOR_IQM else ""
        rows.append([strategy, accumulate, f"{len(runs)}{star}"]
                    + [_interval(cells[m]) for m in METRICS] + [f"{np.mean([r['env_steps'] for r in runs]):,.0f}"])
        data["groups"][f"{strategy}/{accumulate}"] = {
            "runs": len(runs), "env_steps": [r["env_steps"] for r in runs],
            **{m: (list(cells[m]) if cells[m] else None) for m in METRICS},
            "steps_to_target": [[r["steps_to_target"][k] for r in runs] for k in range(len(stages))],
            "mean_matrix": np.mean([r["scores"] for r in runs], axis=0).tolist()}
    blocks += [Heading(2, "Forgetting and transfer"),
               Table(["strategy", "accumulate", "runs", "ACC", "BWT", "FWT", "forgetting", "joint ACC", "env steps"],
                     rows)]
    target = done[0].config.get("target") or {}
    blocks += _targets(groups, stages, [target.get(env) for env in stages])
    blocks += [Heading(2, "Knowledge changes (mean per run)"), Table(
        ["strategy", "accumulate", "inserted", "modified", "erased", "replayed"],
        [[s, a, *(f"{np.mean([r[k] for r in runs]):.1f}" for k in
                  ("items_inserted", "items_modified", "items_erased", "items_replayed"))]
         for (s, a), runs in groups.items()])]
    figures = []
    blocks.append(Heading(2, "Mean score matrices"))
    for (strategy, accumulate), runs in groups.items():
        mean = data["groups"][f"{strategy}/{accumulate}"]["mean_matrix"]
        figures.append(Figure(f"{strategy} ({accumulate}): mean matrix over {len(runs)} seeds",
                              f"matrix_{slug(strategy).strip('_')}_{accumulate}.png",
                              plot_matrix(mean, stages, f"{strategy} ({accumulate}), mean of {len(runs)}",
                                          normalised)))
        blocks.append(figures[-1])
    timed: dict[str, list[tuple[dict, float]]] = {}
    for r in sorted(done, key=lambda r: (order(r.strategy), suffix[r.run_id], r.stream["accumulate"])):  # type: ignore[index]
        if r.phases:
            timed.setdefault(f"{r.strategy}{suffix[r.run_id]} ({r.stream['accumulate']})", []).append(
                (r.phases, r.wall_seconds))
    timing, timing_figures = timing_blocks(f"Per strategy and accumulation mode, over the runs that timed their "
                                           f"phases ({NOTE}):", "the stream", "phases.png", timed, STREAM_PHASES)
    if timing:
        blocks += [Heading(2, "Where a stream's time goes"), *timing]
        figures += timing_figures
    if failed:
        blocks += [Heading(2, "Failed runs (excluded)"),
                   Bullets([f"{r.run_id}: {last_error_line(r.error)}" for r in failed])]
    return blocks, figures, data


def _budget(config: dict) -> int:
    """The stream's feedback budget: the environment steps its stages grant, summed."""
    return sum(s["iterations"] * s["steps_per_iteration"] for s in config["stages"])


def _rescored(stream: dict, normalised: bool) -> dict:
    """The run's summary with ``scores`` (the matrix the report uses) and its metrics on that matrix,
    the joint upper bound's ACC among them (None for runs without one)."""
    scores = stream["matrix"] if normalised else stream["raw_matrix"]
    joint = stream.get("joint_returns")
    if joint is not None and normalised:
        joint = normalise([joint], stream["random_returns"], stream["reference_returns"])[0]
    return {**stream, "scores": scores, **stream_metrics(scores).to_json(),
            "acc_joint": None if joint is None else sum(joint) / len(joint)}


def _targets(groups: dict[tuple[str, str], list[dict]], stages: list[str], targets: list[float | None]
             ) -> list[Block]:
    """Per stage with a target, the environment steps from the stage's start until it was reached, and how
    many runs still held it when the stage ended (a run can reach it and lose it again)."""
    staged = [k for k in range(len(stages)) if targets[k] is not None]
    if not staged:
        return []
    rows = []
    for (strategy, accumulate), runs in groups.items():
        cells = []
        for k in staged:
            reached = [r["steps_to_target"][k] for r in runs if r["steps_to_target"][k] is not None]
            held = sum(targets[k] is not None and r["stage_returns"][k] >= targets[k] for r in runs)
            cells.append((f"{np.median(reached):,.0f} ({len(reached)}/{len(runs)})" if reached
                          else f"not reached (0/{len(runs)})") + f"; {held}/{len(runs)} at the end")
        rows.append([strategy, accumulate, *cells])
    return [Heading(2, "Environment steps to reach each stage's target"),
            Para("Median over the runs that reached it, counted from the stage's start (0: the stage began "
                 "at its target), with how many runs reached it; then how many runs were at or above the "
                 "target when the stage ended."),
            Table(["strategy", "accumulate", *(f"{k + 1}: {stages[k]}" for k in staged)], rows)]


def _interval(cell: tuple[float, float, float] | None) -> str:
    if cell is None:
        return "-"
    iqm, lo, hi = cell
    return f"{num(iqm)} [{num(lo)}, {num(hi)}]"
