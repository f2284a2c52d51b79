"""IQM and stratified-bootstrap confidence intervals (rliable), and the comparisons built on them.

Per environment and strategy the headline number is the interquartile mean
(IQM) of the runs' final scores with a 95 % stratified-bootstrap confidence
interval, as rliable recommends for few-run RL comparisons (Agarwal et al.,
NeurIPS 2021): the IQM ignores the best and worst quarter of runs, so one
lucky or crashed seed cannot decide a comparison, and the interval says when
a difference is not separable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics

from llmrl.report.render import num
from llmrl.report.runs import Run
from llmrl.strategies import EDIT_STRATEGIES, order


BOOTSTRAP_REPS = 2000


BOOTSTRAP_SEED = 0


MIN_RUNS_FOR_IQM = 4  # below this trim_mean cuts int(0.25 * n) = 0 runs per end
# Hollow markers of decreasing size: curves that coincide (e.g. all at the cap) stay visible.


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
        return f"{num(self.iqm)} [{num(self.lo)}, {num(self.hi)}]"

    def describe(self) -> str:
        return f"{self.strategy} {self.interval()}"


def iqm_ci(scores: np.ndarray) -> tuple[float, float, float]:
    """IQM and 95 % percentile-bootstrap CI of per-run scores (one task, so stratification is over runs)."""
    (iqm, lo, hi), _ = bootstrap(np.asarray(scores, dtype=float).reshape(-1, 1))
    return iqm, lo, hi


def bootstrap(scores: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


def strategy_stats(runs: list[Run]) -> list[Stat]:
    """One Stat per strategy that finished a run, in the fixed strategy order."""
    out = []
    for strategy in sorted({r.strategy for r in runs}, key=order):
        mine = [r for r in runs if r.strategy == strategy]
        iqm, lo, hi = iqm_ci(np.array([r.score for r in mine]))
        out.append(Stat(strategy, len(mine), iqm, lo, hi, float(np.mean([r.env_steps for r in mine])),
                        float(np.mean([r.wall_seconds for r in mine]))))
    return out


def by_iqm(stats: list[Stat]) -> list[Stat]:
    """Best IQM first; ties keep the fixed strategy order."""
    return sorted(stats, key=lambda s: -s.iqm)



def aligned(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' curves on one grid, shape (seeds, points).

    The grid is the union of the seeds' env_steps inside the range every seed
    covers, each curve linearly interpolated onto it, so every point of the
    aggregate line is over the same seeds.
    """
    lo, hi = max(r.steps[0] for r in runs), min(r.steps[-1] for r in runs)
    grid = np.unique(np.concatenate([r.steps for r in runs]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return grid, np.array([np.interp(grid, r.steps, r.curve) for r in runs])


def overlap(a: Stat, b: Stat) -> bool:
    return a.lo <= b.hi and b.lo <= a.hi


def separable(a: Stat, b: Stat) -> bool:
    """Intervals apart, each from enough runs for its interval to mean something."""
    return not overlap(a, b) and min(a.runs, b.runs) >= MIN_RUNS_FOR_IQM


def winner_of(stats: list[Stat]) -> str | None:
    """The strategy with the highest IQM; None when several share it (e.g. all score 0)."""
    ranked = by_iqm(stats)
    return None if len(ranked) > 1 and ranked[1].iqm == ranked[0].iqm else ranked[0].strategy


def values_at(ppo: list[Run], at: float) -> list[float]:
    """Each PPO seed's curve interpolated at ``at`` env steps, for the seeds whose curve spans it."""
    return [float(np.interp(at, r.steps, r.curve)) for r in ppo if r.steps[0] <= at <= r.steps[-1]]


def ppo_stat_at(ppo: list[Run], at: float, learner: str) -> Stat | None:
    """A PPO learner's IQM and CI at ``at`` env steps, its seeds' curves interpolated; None if none reach it."""
    values = values_at(ppo, at)
    if not values:
        return None
    return Stat(learner, len(values), *iqm_ci(np.array(values)), env_steps=at, wall_seconds=float("nan"))


def edit_steps(runs: list[Run]) -> float | None:
    """The mean env steps of an environment's edit runs: where PPO is compared with the edits."""
    steps = [r.env_steps for r in runs if r.strategy in EDIT_STRATEGIES]
    return float(np.mean(steps)) if steps else None
