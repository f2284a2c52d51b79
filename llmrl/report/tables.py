"""The report's tables: overview, pooled scores, edit metrics, portability and per-seed returns."""

from __future__ import annotations

import numpy as np

from llmrl.report.render import Block, Heading, Para, Table, count, num
from llmrl.report.runs import Run
from llmrl.report.stats import MIN_RUNS_FOR_IQM, Stat, bootstrap, edit_steps, iqm_ci, ppo_stat_at, values_at
from llmrl.strategies import EDIT_STRATEGIES, PPO_LEARNERS, order


EDIT_METRICS = (("reliability", "reliability", "{:.2f}"), ("generalization", "generalization", "{:.2f}"),
                ("locality_kl", "locality KL (nats)", "{:.2g}"), ("locality_top1", "top-1 agreement", "{:.3f}"),
                ("edit_seconds", "edit seconds", "{:.1f}"), ("params_touched", "parameters touched", "{:,.0f}"))
# Fixed so the same runs always give the same intervals. Against rliable's default
# of 50,000 resamples, 2,000 moved the bounds by at most 5 % of the interval's width
# on 5-10 runs, at about 0.1 s per cell instead of seconds.


def few(runs: int) -> str:
    """The mark of a cell over fewer runs than the IQM needs to trim anything."""
    return "*" if runs < MIN_RUNS_FOR_IQM else ""


def pooled(by_env: dict[str, list[Run]], normalised: list[str]) -> tuple[list[Block], dict]:
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
    strategies = sorted({r.strategy for env in normalised for r in by_env[env]}, key=order)
    for strategy in strategies:
        per_env = [[r.score for r in by_env[env] if r.strategy == strategy] for env in normalised]
        if all(per_env):
            columns[strategy] = per_env
    for learner in PPO_LEARNERS:
        per_env = []
        for env in normalised:
            at = edit_steps(by_env[env])
            per_env.append(values_at([r for r in by_env[env] if r.strategy == learner], at) if at else [])
        if all(per_env):
            columns[f"{learner} at the edits' steps"] = per_env
    for name, per_env in columns.items():
        n = min(len(x) for x in per_env)
        (iqm, lo, hi), (mean, mlo, mhi) = bootstrap(np.array([x[:n] for x in per_env], dtype=float).T)
        data[name] = {"runs_per_env": n, "iqm": iqm, "ci": [lo, hi], "mean": mean, "mean_ci": [mlo, mhi]}
        rows.append([name, f"{n}{few(n)}",
                     f"{num(iqm)} [{num(lo)}, {num(hi)}]", f"{num(mean)} [{num(mlo)}, {num(mhi)}]"])
    left_out = [s for s in strategies if s not in columns]
    text = (f"Normalised scores pooled over {count(len(normalised), 'environment')} ({', '.join(normalised)}): "
            "IQM and mean over all runs, 95 % stratified-bootstrap CIs (runs resampled within each environment). "
            "Runs per environment is the fewest a strategy has on any of them; that many are used from each.")
    if left_out:
        text += f" Left out, missing on some of them: {', '.join(left_out)}."
    return [Heading(2, "Across environments"), Para(text),
            Table(["strategy", "runs per environment", "IQM [95 % CI]", "mean [95 % CI]"], rows)], data


def overview(envs: list[str], stats: dict[str, list[Stat]], by_env: dict[str, list[Run]],
              references: dict[str, tuple[float, float]]) -> list[Block]:
    """One table, strategies by environments, of the per-environment IQMs and CIs: the report at a glance.

    PPO also gets rows at the edits' env steps, as in the pooled table, so each
    column compares the learners at the same budget as well as at PPO's own.
    """
    by_strategy = {env: {s.strategy: s for s in stats[env]} for env in envs}
    cells = {strategy: {env: by_strategy[env][strategy] for env in envs if strategy in by_strategy[env]}
             for strategy in sorted({name for env in envs for name in by_strategy[env]}, key=order)}
    for learner in PPO_LEARNERS:
        for env in envs:
            at = edit_steps(by_env[env])
            ppo_at = ppo_stat_at([r for r in by_env[env] if r.strategy == learner], at, learner) if at else None
            if ppo_at is not None:
                cells.setdefault(f"{learner} at the edits' steps", {})[env] = ppo_at
    rows = [[name] + [f"{c[env].interval()}{few(c[env].runs)}" if env in c else "-" for env in envs]
            for name, c in cells.items()]
    scale = [env for env in envs if env in references]
    scale_text = ("normalised" if len(scale) == len(envs) else
                  f"normalised on {', '.join(scale)}, raw returns elsewhere" if scale else "raw returns")
    text = ("IQM [95 % CI] of the final score per strategy and environment, as in the tables below "
            f"({scale_text}); "
            "* marks fewer than 4 runs, - a strategy that did not run there.")
    return [Heading(2, "Overview"), Para(text), Table(["strategy", *envs], rows)]


def per_seed_blocks(runs: list[Run]) -> list[Block]:
    """Each strategy's raw final return per seed: the runs behind an IQM, in the units a reader quotes."""
    seeds = sorted({r.seed for r in runs})
    rows = []
    for strategy in sorted({r.strategy for r in runs}, key=order):
        mine = sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.run_id)
        rows.append([strategy] + [" / ".join(num(r.final_return) for r in mine if r.seed == seed) or "-"
                                  for seed in seeds])
    return [Para("Final return per seed (raw, mean over the evaluation episodes; '-' where a seed has no run):"),
            Table(["strategy"] + [f"seed {s}" for s in seeds], rows)]


def edit_metrics_blocks(runs: list[Run]) -> list[Block]:
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
    return [Para("Edit metrics (mean over seeds):"), Table(["strategy", "runs"] + [t for _, t, _ in EDIT_METRICS],
                                                            rows)]


def portability_blocks(runs: list[Run]) -> list[Block]:
    """Per strategy, IQM [95 % CI] of the final return on each card variant; nothing without variants."""
    variants = sorted({name for r in runs for name in r.portability})
    if not variants:
        return []
    rows = []
    for strategy in sorted({r.strategy for r in runs}, key=order):
        cells = []
        for name in variants:
            scores = np.array([r.portability[name] for r in runs if r.strategy == strategy and name in r.portability])
            cells.append(Stat(strategy, len(scores), *iqm_ci(scores), 0.0, 0.0).interval() if len(scores) else "-")
        if any(c != "-" for c in cells):
            rows.append([strategy] + cells)
    return [Para("Portability: final return on the card's variants, unnormalised (IQM [95 % CI]; "
                  "'-' where a policy could not play the variant):"),
            Table(["strategy"] + variants, rows)]


def _mean_present(values: list) -> float:
    """Mean of the values that are not None (a metric a run did not measure); NaN if none are."""
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")
