"""The experiment report behind ``llmrl report RESULTS_DIR``.

An experiment folder holds one JSON record per run in ``RESULTS_DIR/runs/``.
:func:`write_report` turns them into ``report.md`` (with the learning curves
as PNG files beside it) and a self-contained ``report.html`` (the same content,
figures embedded as base64, no external files or URLs), so one file can be
mailed or attached to an issue.

Per environment and strategy the headline number is the interquartile mean
(IQM) of the runs' final returns with a 95 % stratified-bootstrap confidence
interval, as rliable recommends for few-run RL comparisons: the IQM ignores
the best and worst quarter of runs, so one lucky or crashed seed cannot decide
a comparison, and the interval says when a difference is not separable.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rliable import library as rly
from rliable import metrics

from llmrl.ablate import EDIT_STRATEGIES, PPO_OBSERVATIONS, STRATEGIES as STRATEGY_ORDER
from llmrl.baselines import PROMPT_BASELINES
from llmrl.errors import UsageError

# (key in the run record's "edit" object, column title, format)
EDIT_METRICS = (("reliability", "reliability", "{:.2f}"), ("generalization", "generalization", "{:.2f}"),
                ("locality_kl", "locality KL (nats)", "{:.2g}"), ("locality_top1", "top-1 agreement", "{:.3f}"),
                ("edit_seconds", "edit seconds", "{:.1f}"), ("params_touched", "parameters touched", "{:,.0f}"))
# Fixed so the same runs always give the same intervals. Against rliable's default
# of 50,000 resamples, 2,000 moved the bounds by at most 5 % of the interval's width
# on 5-10 runs, at about 0.1 s per cell instead of seconds.
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
MIN_RUNS_FOR_IQM = 4  # below this trim_mean cuts int(0.25 * n) = 0 runs per end
# Hollow markers of decreasing size: curves that coincide (e.g. all at the cap) stay visible.
MARKERS = {"context": ("o", 10), "adapter": ("s", 7), "weights": ("^", 5), "ppo": ("D", 4),
           "ppo-pixels": ("v", 4)}
# One colour per strategy (strict: a new strategy without one fails at import, not as a silent repeat).
COLOURS = dict(zip(STRATEGY_ORDER, ("#7f7f7f", "#bcbd22", "#17becf", "#8c564b", "#e377c2",
                                    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"), strict=True))


@dataclass(frozen=True)
class Run:
    """One finished run, its returns already on the report's scale (raw or normalised)."""

    run_id: str
    env: str
    strategy: str
    seed: int
    model: str | None
    score: float  # final mean return over the evaluation episodes
    final_return: float  # the same, raw
    steps: np.ndarray  # the learning curve's env_steps, ascending
    curve: np.ndarray  # mean return at each of those steps
    env_steps: float
    wall_seconds: float
    edit: dict | None
    #: Final mean return (raw, never normalised) on each card variant the run was evaluated on.
    portability: dict[str, float]


@dataclass(frozen=True)
class Stat:
    """IQM and 95 % CI of one strategy's final scores on one environment."""

    strategy: str
    runs: int
    iqm: float
    lo: float
    hi: float
    env_steps: float
    wall_seconds: float

    def interval(self) -> str:
        return f"{_num(self.iqm)} [{_num(self.lo)}, {_num(self.hi)}]"

    def describe(self) -> str:
        return f"{self.strategy} {self.interval()}"


def write_report(results_dir: Path, reference_scores: dict[str, tuple[float, float]] | None = None) -> dict:
    """Write ``report.md``, its curve PNGs and ``report.html`` into ``results_dir``.

    ``reference_scores`` maps an environment to ``(random_score, reference_score)``
    (e.g. Atari human scores); returns on those environments are reported as
    ``(x - random) / (reference - random)``, elsewhere as raw returns. By default
    they are the experiment's ``reference_scores`` (``experiment.json``), if any.

    IQM with fewer than 4 runs: rliable's IQM is ``scipy.stats.trim_mean(x, 0.25)``,
    which cuts ``int(0.25 * n)`` runs from each end, i.e. none for n < 4. It then
    degrades to the plain mean, and the bootstrap interval over 2-3 runs is
    coarse (over one run it has zero width). Such rows are marked ``*`` and any
    comparison involving them is flagged as indicative only.

    Returns JSON-ready data for the command line: the paths written, the winner
    per environment and every table cell's numbers.
    """
    results_dir = Path(results_dir)
    references = reference_scores if reference_scores is not None else _experiment_references(results_dir)
    runs, failed = _load_runs(results_dir, references)
    envs = sorted({r.env for r in runs})
    by_env = {env: [r for r in runs if r.env == env] for env in envs}
    stats = {env: _strategy_stats(by_env[env]) for env in envs}

    figures: list[_Figure] = []
    env_blocks: list[_Block] = []
    for env in envs:
        score = "normalised score" if env in references else "final return"
        env_blocks += [_Heading(2, env), _Table(
            ["strategy", "runs", f"{score} IQM [95 % CI]", "env steps (mean)", "wall time (mean)"],
            [[s.strategy, f"{s.runs}{_few(s.runs)}", s.interval(),
              f"{s.env_steps:,.0f}", _duration(s.wall_seconds)] for s in stats[env]])]
        figures.append(_Figure(f"{env}: {score} against environment steps", f"curves_{_slug(env)}.png",
                               _plot_curves(env, by_env[env], stats[env], score.removeprefix("final "))))
        env_blocks.append(figures[-1])
        env_blocks += _edit_metrics_blocks(by_env[env])
        env_blocks += _portability_blocks(by_env[env])
        env_blocks += _per_seed_blocks(by_env[env])

    winners = {env: _winner(stats[env]) for env in envs}
    summary = [_summary(env, stats[env], by_env[env]) for env in envs]
    if len(envs) > 1:
        summary.append(_tally(winners, stats))
    floor = _edits_over_floor(stats)
    if floor:
        summary.append(floor)
    summary += _edits_vs_ppo(stats, by_env)
    normalised = [env for env in envs if env in references]
    aggregate_blocks, aggregate = _aggregate(by_env, normalised) if len(normalised) > 1 else ([], {})
    title = f"Experiment report: {results_dir.resolve().name}"
    blocks: list[_Block] = [_Heading(1, title), _Para(_intro(runs, failed, envs)),
                            _Heading(2, "Where each strategy wins"), _Bullets(summary or ["No finished runs."]),
                            *(_overview(envs, stats, by_env, references) if len(envs) > 1 else []),
                            *aggregate_blocks, *env_blocks]
    if failed:
        blocks += [_Heading(2, "Failed runs (excluded from the statistics)"),
                   _Bullets([f"{run_id}: {error}" for run_id, error in failed])]

    md_path, html_path = results_dir / "report.md", results_dir / "report.html"
    for fig in figures:
        (results_dir / fig.name).write_bytes(fig.png)
    md_path.write_text(_markdown(blocks))
    html_path.write_text(_html(blocks, title))
    return {
        "markdown": str(md_path), "html": str(html_path), "figures": [str(results_dir / f.name) for f in figures],
        "winners": winners, "failed": [run_id for run_id, _ in failed],
        "normalised": normalised, "aggregate": aggregate,
        "stats": {env: {s.strategy: {"runs": s.runs, "iqm": s.iqm, "ci": [s.lo, s.hi], "env_steps": s.env_steps,
                                     "wall_seconds": s.wall_seconds} for s in stats[env]} for env in envs},
    }


# ---------------------------------------------------------------------------- reading runs

def _experiment_references(results_dir: Path) -> dict[str, tuple[float, float]]:
    """(random, human) per environment from the experiment's config, written by ``llmrl ablate``."""
    try:
        config = json.loads((results_dir / "experiment.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return {}
    return {env: (ref["random"], ref["human"]) for env, ref in (config.get("reference_scores") or {}).items()}


def _load_runs(results_dir: Path, reference_scores: dict[str, tuple[float, float]]
               ) -> tuple[list[Run], list[tuple[str, str]]]:
    """Finished runs, and (run id, last error line) of the failed ones."""
    paths = sorted((results_dir / "runs").glob("*.json"))
    if not paths:
        raise UsageError(f"no runs in {results_dir / 'runs'}: expected one JSON file per run there")
    runs, failed = [], []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a readable JSON run record ({exc})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path}: a run record must be a JSON object")
        if record.get("status") != "ok":
            lines = [ln for ln in str(record.get("error") or "").splitlines() if ln.strip()]
            failed.append((str(record.get("run_id", path.stem)), lines[-1].strip() if lines else "(no error text)"))
            continue
        try:
            runs.append(_parse_run(record, reference_scores))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: missing or malformed field in run record ({exc!r})") from None
    return runs, failed


def _parse_run(record: dict, reference_scores: dict[str, tuple[float, float]]) -> Run:
    env = record["env"]
    scale = _scale(env, reference_scores.get(env))
    points = sorted((float(p["env_steps"]), float(p["mean_return"])) for p in record["curve"])
    if not points:
        raise ValueError("empty curve")
    final = float(record["final_mean_return"])
    return Run(run_id=str(record["run_id"]), env=env, strategy=record["strategy"], seed=int(record["seed"]),
               model=record.get("model"), score=scale(final), final_return=final,
               steps=np.array([s for s, _ in points]), curve=np.array([scale(v) for _, v in points]),
               env_steps=float(record["env_steps"]), wall_seconds=float(record["wall_seconds"]),
               edit=record.get("edit"),
               portability={name: float(v["mean_return"]) for name, v in (record.get("portability") or {}).items()
                            if "mean_return" in v})


def _scale(env: str, reference: tuple[float, float] | None) -> Callable[[float], float]:
    """Identity, or the normalisation (x - random) / (reference - random)."""
    if reference is None:
        return lambda x: x
    low, high = (float(v) for v in reference)
    if high == low:
        raise UsageError(f"reference scores for {env}: random and reference score are equal ({low})")
    return lambda x: (x - low) / (high - low)


# ---------------------------------------------------------------------------- statistics

def _iqm_ci(scores: np.ndarray) -> tuple[float, float, float]:
    """IQM and 95 % percentile-bootstrap CI of per-run scores (one task, so stratification is over runs)."""
    (iqm, lo, hi), _ = _bootstrap(np.asarray(scores, dtype=float).reshape(-1, 1))
    return iqm, lo, hi


def _bootstrap(scores: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """IQM and mean, each with its 95 % CI, of a (runs, tasks) score matrix; runs resampled within each task.

    rliable 1.2's StratifiedBootstrap ignores its ``random_state`` and resamples
    with NumPy's global generator, so that generator is seeded here, and the
    caller's state restored after, for the same intervals from the same runs.
    """
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        point, interval = rly.get_interval_estimates(
            {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]),
            reps=BOOTSTRAP_REPS)
    finally:
        np.random.set_state(state)
    p, i = point["x"], interval["x"]
    return (float(p[0]), float(i[0, 0]), float(i[1, 0])), (float(p[1]), float(i[0, 1]), float(i[1, 1]))


def _strategy_stats(runs: list[Run]) -> list[Stat]:
    """One Stat per strategy that finished a run, in the fixed strategy order."""
    out = []
    for strategy in sorted({r.strategy for r in runs}, key=_order):
        mine = [r for r in runs if r.strategy == strategy]
        iqm, lo, hi = _iqm_ci(np.array([r.score for r in mine]))
        out.append(Stat(strategy, len(mine), iqm, lo, hi, float(np.mean([r.env_steps for r in mine])),
                        float(np.mean([r.wall_seconds for r in mine]))))
    return out


def _ranked(stats: list[Stat]) -> list[Stat]:
    """Best IQM first; ties keep the fixed strategy order."""
    return sorted(stats, key=lambda s: -s.iqm)


def _order(strategy: str) -> tuple[int, str]:
    """The fixed strategy order; unknown strategies after it, alphabetically."""
    return (STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER), strategy)


def _aligned(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' curves on one grid, shape (seeds, points).

    The grid is the union of the seeds' env_steps inside the range every seed
    covers, each curve linearly interpolated onto it, so every point of the
    aggregate line is over the same seeds.
    """
    lo, hi = max(r.steps[0] for r in runs), min(r.steps[-1] for r in runs)
    grid = np.unique(np.concatenate([r.steps for r in runs]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return grid, np.array([np.interp(grid, r.steps, r.curve) for r in runs])


# ---------------------------------------------------------------------------- summary text

def _overlap(a: Stat, b: Stat) -> bool:
    return a.lo <= b.hi and b.lo <= a.hi


def _separable(a: Stat, b: Stat) -> bool:
    """Intervals apart, each from enough runs for its interval to mean something."""
    return not _overlap(a, b) and min(a.runs, b.runs) >= MIN_RUNS_FOR_IQM


def _separation(a: Stat, b: Stat) -> str:
    if _overlap(a, b):
        return "CIs overlap: not separable"
    if not _separable(a, b):
        return "CIs do not overlap, but with fewer than 4 runs that is only indicative"
    return "CIs do not overlap"


def _winner(stats: list[Stat]) -> str | None:
    """The strategy with the highest IQM; None when several share it (e.g. all score 0)."""
    ranked = _ranked(stats)
    return None if len(ranked) > 1 and ranked[1].iqm == ranked[0].iqm else ranked[0].strategy


def _summary(env: str, stats: list[Stat], runs: list[Run]) -> str:
    """Winner, margin over the runner-up, best edit vs best prompt baseline, and vs PPO at equal steps."""
    stats = _ranked(stats)
    winner = stats[0]
    if len(stats) == 1:
        return f"{env}: only {winner.describe()} finished."
    runner = stats[1]
    if _winner(stats) is None:
        tied = [s.strategy for s in stats if s.iqm == winner.iqm]
        parts = [f"{env}: no winner; {len(tied)} strategies tie at IQM {_num(winner.iqm)} ({', '.join(tied)})."]
    else:
        parts = [f"{env}: {winner.describe()} wins, {_num(winner.iqm - runner.iqm)} above "
                 f"{runner.describe()}; {_separation(winner, runner)}."]
    edits = [s for s in stats if s.strategy in EDIT_STRATEGIES]
    prompts = [s for s in stats if s.strategy in PROMPT_BASELINES]
    if edits and prompts:  # ranked, so [0] is the best of each group
        parts.append(f"Best edited strategy {edits[0].describe()} vs best prompt baseline {prompts[0].describe()}: "
                     f"{_num(edits[0].iqm - prompts[0].iqm, signed=True)}; {_separation(edits[0], prompts[0])}.")
    for learner in PPO_OBSERVATIONS:
        ppo = [r for r in runs if r.strategy == learner]
        if edits and ppo:
            parts.append(_versus_ppo(edits[0], ppo, learner))
    return " ".join(parts)


def _versus_ppo(edit: Stat, ppo: list[Run], learner: str = "ppo") -> str:
    """Compare an edit strategy with a PPO learner's curves interpolated at the edit runs' mean env steps."""
    at = edit.env_steps
    name = _learner_name(learner)
    ppo_at = _ppo_at(ppo, at, learner)
    if ppo_at is None:
        return (f"{name}'s curves span {min(r.steps[0] for r in ppo):,.0f}-{max(r.steps[-1] for r in ppo):,.0f} "
                f"env steps, so it cannot be compared with {edit.strategy} at {at:,.0f}.")
    return (f"At {edit.strategy}'s {at:,.0f} env steps {name} reaches {ppo_at.interval()} "
            f"(curves of {ppo_at.runs} seeds interpolated): {edit.strategy} "
            f"{_num(edit.iqm - ppo_at.iqm, signed=True)}; {_separation(edit, ppo_at)}.")


def _learner_name(learner: str) -> str:
    return learner.upper() if learner == "ppo" else learner


def _values_at(ppo: list[Run], at: float) -> list[float]:
    """Each PPO seed's curve interpolated at ``at`` env steps, for the seeds whose curve spans it."""
    return [float(np.interp(at, r.steps, r.curve)) for r in ppo if r.steps[0] <= at <= r.steps[-1]]


def _ppo_at(ppo: list[Run], at: float, learner: str) -> Stat | None:
    """A PPO learner's IQM and CI at ``at`` env steps, its seeds' curves interpolated; None if none reach it."""
    values = _values_at(ppo, at)
    if not values:
        return None
    return Stat(learner, len(values), *_iqm_ci(np.array(values)), env_steps=at, wall_seconds=float("nan"))


def _edits_vs_ppo(stats: dict[str, list[Stat]], by_env: dict[str, list[Run]]) -> list[str]:
    """Per PPO learner: on how many environments the best edit is above it at equal steps, and at its final steps."""
    lines = []
    for learner in PPO_OBSERVATIONS:
        equal, final, judged = [0, 0], [0, 0], 0
        for env, env_stats in stats.items():
            edits = [s for s in _ranked(env_stats) if s.strategy in EDIT_STRATEGIES]
            ppo_final = next((s for s in env_stats if s.strategy == learner), None)
            ppo_at = _ppo_at([r for r in by_env[env] if r.strategy == learner], edits[0].env_steps,
                             learner) if edits and ppo_final else None
            if ppo_at is None:
                continue
            judged += 1
            for tally, ppo in ((equal, ppo_at), (final, ppo_final)):
                tally[0] += edits[0].iqm > ppo.iqm
                tally[1] += edits[0].iqm > ppo.iqm and _separable(edits[0], ppo)
        if judged:
            steps = sorted({s.env_steps for env_stats in stats.values() for s in env_stats if s.strategy == learner})
            lines.append(f"The best edited strategy is above {_learner_name(learner)} at equal env steps on "
                         f"{equal[0]} of {judged} environments (CIs apart on {equal[1]}), and above its final "
                         f"score ({', '.join(f'{x:,.0f}' for x in steps)} env steps) on {final[0]} "
                         f"(CIs apart on {final[1]}).")
    return lines


def _tally(winners: dict[str, str | None], stats: dict[str, list[Stat]]) -> str:
    """Wins per strategy over all environments, and where the win is clear of the runner-up's interval."""
    won = {w for w in winners.values() if w is not None}
    counts = {w: sum(v == w for v in winners.values()) for w in sorted(won, key=_order)}
    ties = [env for env, w in winners.items() if w is None]
    clear = [env for env, s in stats.items() if len(s) > 1 and _separable(*_ranked(s)[:2])]
    parts = [f"{w} {n}" for w, n in counts.items()]
    if ties:
        parts.append(f"no winner {len(ties)} ({', '.join(ties)})")
    return (f"Wins by IQM over {len(winners)} environments: {', '.join(parts)}; "
            f"separable from the runner-up in {len(clear)} ({', '.join(clear) or 'none'}).")


def _edits_over_floor(stats: dict[str, list[Stat]]) -> str | None:
    """On how many environments an edited strategy beats both zero-shot and random, intervals apart."""
    judged, beaten = [], []
    for env, env_stats in stats.items():
        by = {s.strategy: s for s in env_stats}
        edits = [s for s in _ranked(env_stats) if s.strategy in EDIT_STRATEGIES]
        if "zero-shot" not in by or "random" not in by or not edits:
            continue
        judged.append(env)
        wins = [s.strategy for s in edits
                if all(s.iqm > by[b].iqm and _separable(s, by[b]) for b in ("zero-shot", "random"))]
        if wins:
            beaten.append(f"{env} ({', '.join(wins)})")
    if not judged:
        return None
    return (f"An edited strategy beats both zero-shot and random, CIs apart, on {len(beaten)} of {len(judged)} "
            f"environments: {'; '.join(beaten) or 'none'}.")


def _aggregate(by_env: dict[str, list[Run]], normalised: list[str]) -> tuple[list[_Block], dict]:
    """Per strategy, IQM and mean of the normalised scores over all environments' runs (Agarwal et al. 2021).

    The bootstrap resamples runs within each environment (rliable's stratified
    bootstrap), so it needs the same number of runs everywhere: a strategy's
    first n runs per environment are used, n the fewest it has on any. PPO also
    gets a row at the edits' env steps (its curves interpolated per environment
    at the mean env steps of that environment's edit runs): its final score
    comes after its own, larger budget.
    """
    rows, data = [], {}
    columns: dict[str, list[list[float]]] = {}
    strategies = sorted({r.strategy for env in normalised for r in by_env[env]}, key=_order)
    for strategy in strategies:
        per_env = [[r.score for r in by_env[env] if r.strategy == strategy] for env in normalised]
        if all(per_env):
            columns[strategy] = per_env
    for learner in PPO_OBSERVATIONS:
        per_env = []
        for env in normalised:
            at = _edit_steps(by_env[env])
            per_env.append(_values_at([r for r in by_env[env] if r.strategy == learner], at) if at else [])
        if all(per_env):
            columns[f"{learner} at the edits' steps"] = per_env
    for name, per_env in columns.items():
        n = min(len(x) for x in per_env)
        (iqm, lo, hi), (mean, mlo, mhi) = _bootstrap(np.array([x[:n] for x in per_env], dtype=float).T)
        data[name] = {"runs_per_env": n, "iqm": iqm, "ci": [lo, hi], "mean": mean, "mean_ci": [mlo, mhi]}
        rows.append([name, f"{n}{_few(n)}",
                     f"{_num(iqm)} [{_num(lo)}, {_num(hi)}]", f"{_num(mean)} [{_num(mlo)}, {_num(mhi)}]"])
    left_out = [s for s in strategies if s not in columns]
    text = (f"Normalised scores pooled over {_count(len(normalised), 'environment')} ({', '.join(normalised)}): "
            "IQM and mean over all runs, 95 % stratified-bootstrap CIs (runs resampled within each environment). "
            "Runs per environment is the fewest a strategy has on any of them; that many are used from each.")
    if left_out:
        text += f" Left out, missing on some of them: {', '.join(left_out)}."
    return [_Heading(2, "Across environments"), _Para(text),
            _Table(["strategy", "runs per environment", "IQM [95 % CI]", "mean [95 % CI]"], rows)], data


def _edit_steps(runs: list[Run]) -> float | None:
    """The mean env steps of an environment's edit runs: where PPO is compared with the edits."""
    steps = [r.env_steps for r in runs if r.strategy in EDIT_STRATEGIES]
    return float(np.mean(steps)) if steps else None


def _overview(envs: list[str], stats: dict[str, list[Stat]], by_env: dict[str, list[Run]],
              references: dict[str, tuple[float, float]]) -> list[_Block]:
    """One table, strategies by environments, of the per-environment IQMs and CIs: the report at a glance.

    PPO also gets rows at the edits' env steps, as in the pooled table, so each
    column compares the learners at the same budget as well as at PPO's own.
    """
    by_strategy = {env: {s.strategy: s for s in stats[env]} for env in envs}
    cells = {strategy: {env: by_strategy[env][strategy] for env in envs if strategy in by_strategy[env]}
             for strategy in sorted({name for env in envs for name in by_strategy[env]}, key=_order)}
    for learner in PPO_OBSERVATIONS:
        for env in envs:
            at = _edit_steps(by_env[env])
            ppo_at = _ppo_at([r for r in by_env[env] if r.strategy == learner], at, learner) if at else None
            if ppo_at is not None:
                cells.setdefault(f"{learner} at the edits' steps", {})[env] = ppo_at
    rows = [[name] + [f"{c[env].interval()}{_few(c[env].runs)}" if env in c else "-" for env in envs]
            for name, c in cells.items()]
    scale = [env for env in envs if env in references]
    scale_text = ("normalised" if len(scale) == len(envs) else
                  f"normalised on {', '.join(scale)}, raw returns elsewhere" if scale else "raw returns")
    text = ("IQM [95 % CI] of the final score per strategy and environment, as in the tables below "
            f"({scale_text}); "
            "* marks fewer than 4 runs, - a strategy that did not run there.")
    return [_Heading(2, "Overview"), _Para(text), _Table(["strategy", *envs], rows)]


def _intro(runs: list[Run], failed: list[tuple[str, str]], envs: list[str]) -> str:
    models = sorted({r.model for r in runs if r.model})
    return (f"{_count(len(runs), 'finished run')} on {_count(len(envs), 'environment')}; {len(failed)} failed"
            f"{' (listed at the end, excluded from the statistics)' if failed else ''}. "
            f"Language model: {', '.join(models) or 'none'}. "
            "A run's score is its final mean return over the evaluation episodes (normalised as "
            "(x - random) / (reference - random) where reference scores are given). Per strategy the table gives "
            f"the interquartile mean (IQM) over runs with a 95 % stratified-bootstrap confidence interval "
            f"(rliable, percentile method, {BOOTSTRAP_REPS:,} resamples, seed {BOOTSTRAP_SEED}). "
            "* marks fewer than 4 runs: nothing is trimmed then, so the IQM is the plain mean and the interval "
            "is only indicative (zero width for a single run). Curves show the IQM over seeds with the "
            "interquartile range shaded; prompt baselines and random, which do not learn, are dashed lines.")


def _per_seed_blocks(runs: list[Run]) -> list[_Block]:
    """Each strategy's raw final return per seed: the runs behind an IQM, in the units a reader quotes."""
    seeds = sorted({r.seed for r in runs})
    rows = []
    for strategy in sorted({r.strategy for r in runs}, key=_order):
        mine = sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.run_id)
        rows.append([strategy] + [" / ".join(_num(r.final_return) for r in mine if r.seed == seed) or "-"
                                  for seed in seeds])
    return [_Para("Final return per seed (raw, mean over the evaluation episodes; '-' where a seed has no run):"),
            _Table(["strategy"] + [f"seed {s}" for s in seeds], rows)]


def _edit_metrics_blocks(runs: list[Run]) -> list[_Block]:
    """Table of the edit strategies' metrics, mean over seeds; nothing when no edit runs finished."""
    rows = []
    for strategy in EDIT_STRATEGIES:
        edits = [r.edit for r in runs if r.strategy == strategy and r.edit]
        if edits:
            means = [_mean_present([e.get(key) for e in edits]) for key, _, _ in EDIT_METRICS]
            rows.append([strategy, str(len(edits))]
                        + ["-" if np.isnan(m) else fmt.format(m) for m, (_, _, fmt) in zip(means, EDIT_METRICS)])
    if not rows:
        return []
    return [_Para("Edit metrics (mean over seeds):"), _Table(["strategy", "runs"] + [t for _, t, _ in EDIT_METRICS],
                                                            rows)]


def _portability_blocks(runs: list[Run]) -> list[_Block]:
    """Per strategy, IQM [95 % CI] of the final return on each card variant; nothing without variants."""
    variants = sorted({name for r in runs for name in r.portability})
    if not variants:
        return []
    rows = []
    for strategy in sorted({r.strategy for r in runs}, key=_order):
        cells = []
        for name in variants:
            scores = np.array([r.portability[name] for r in runs if r.strategy == strategy and name in r.portability])
            cells.append(Stat(strategy, len(scores), *_iqm_ci(scores), 0.0, 0.0).interval() if len(scores) else "-")
        if any(c != "-" for c in cells):
            rows.append([strategy] + cells)
    return [_Para("Portability: final return on the card's variants, unnormalised (IQM [95 % CI]; "
                  "'-' where a policy could not play the variant):"),
            _Table(["strategy"] + variants, rows)]


def _mean_present(values: list) -> float:
    """Mean of the values that are not None (a metric a run did not measure); NaN if none are."""
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


# ---------------------------------------------------------------------------- figures

def _plot_curves(env: str, runs: list[Run], stats: list[Stat], score: str) -> bytes:
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
            ax.axhline(stat.iqm, ls="--", lw=1.2, color=colour, label=f"{stat.strategy} ({_num(stat.iqm)})")
            continue
        grid, values = _aligned(mine)
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


# ---------------------------------------------------------------------------- rendering
# The report is a list of blocks rendered twice, so markdown and HTML cannot drift apart.

@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Bullets:
    items: list[str]


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[str]]  # first column text, the others numbers (right-aligned)


@dataclass(frozen=True)
class _Figure:
    alt: str
    name: str  # PNG file name beside report.md
    png: bytes


_Block = _Heading | _Para | _Bullets | _Table | _Figure


def _markdown(blocks: list[_Block]) -> str:
    out = []
    for block in blocks:
        match block:
            case _Heading(level, text):
                out.append("#" * level + " " + _md(text))
            case _Para(text):
                out.append(_md(text))
            case _Bullets(items):
                out.append("\n".join("- " + _md(item) for item in items))
            case _Table(header, rows):
                out.append("\n".join(["| " + " | ".join(_md(h) for h in header) + " |",
                                      "|---" + "|---:" * (len(header) - 1) + "|"]
                                     + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]))
            case _Figure(alt, name, _):
                out.append(f"![{_md(alt)}]({name})")
    return "\n\n".join(out) + "\n"


def _md(text: str) -> str:
    """Escape the characters that would turn plain text into markdown (run ids are full of ``__``)."""
    return re.sub(r"([\\`*_<>|])", r"\\\1", text)


def _html(blocks: list[_Block], title: str) -> str:
    esc = html.escape
    body = []
    for block in blocks:
        match block:
            case _Heading(level, text):
                body.append(f"<h{level}>{esc(text)}</h{level}>")
            case _Para(text):
                body.append(f"<p>{esc(text)}</p>")
            case _Bullets(items):
                body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>")
            case _Table(header, rows):
                body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
                            "<tbody>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                                                for row in rows) + "</tbody></table>")
            case _Figure(alt, _, png):
                body.append(f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,'
                            f'{base64.b64encode(png).decode("ascii")}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}"
             "td+td,th+th{text-align:right}th{background:#f3f3f3}img{max-width:100%}li{margin:.4em 0}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------- formatting

def _num(x: float, signed: bool = False) -> str:
    """Returns of hundreds keep one decimal; small returns and normalised scores two."""
    return format(x, ("+" if signed else "") + (",.1f" if abs(x) >= 10 else ".2f"))


def _few(runs: int) -> str:
    """The mark of a cell over fewer runs than the IQM needs to trim anything."""
    return "*" if runs < MIN_RUNS_FOR_IQM else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _slug(env: str) -> str:
    """A file-name-safe form of an environment id (``ALE/Pong-v5`` -> ``ALE_Pong-v5``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", env)
