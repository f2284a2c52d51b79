"""The report's sentences: who wins where, by how much, and whether the intervals separate."""

from __future__ import annotations

from llmrl.report.render import count, num
from llmrl.report.runs import Run
from llmrl.report.stats import (BOOTSTRAP_REPS, BOOTSTRAP_SEED, Stat, by_iqm, overlap, ppo_stat_at, separable,
                                winner_of)
from llmrl.strategies import EDIT_STRATEGIES, PPO_LEARNERS, PROMPT_BASELINES, order


def separation(a: Stat, b: Stat) -> str:
    if overlap(a, b):
        return "CIs overlap: not separable"
    if not separable(a, b):
        return "CIs do not overlap, but with fewer than 4 runs that is only indicative"
    return "CIs do not overlap"


def env_summary(env: str, stats: list[Stat], runs: list[Run]) -> str:
    """Winner, margin over the runner-up, best edit vs best prompt baseline, and vs PPO at equal steps."""
    stats = by_iqm(stats)
    winner = stats[0]
    if len(stats) == 1:
        return f"{env}: only {winner.describe()} finished."
    runner = stats[1]
    if winner_of(stats) is None:
        tied = [s.strategy for s in stats if s.iqm == winner.iqm]
        parts = [f"{env}: no winner; {len(tied)} strategies tie at IQM {num(winner.iqm)} ({', '.join(tied)})."]
    else:
        parts = [f"{env}: {winner.describe()} wins, {num(winner.iqm - runner.iqm)} above "
                 f"{runner.describe()}; {separation(winner, runner)}."]
    edits = [s for s in stats if s.strategy in EDIT_STRATEGIES]
    prompts = [s for s in stats if s.strategy in PROMPT_BASELINES]
    if edits and prompts:  # ranked, so [0] is the best of each group
        parts.append(f"Best edited strategy {edits[0].describe()} vs best prompt baseline {prompts[0].describe()}: "
                     f"{num(edits[0].iqm - prompts[0].iqm, signed=True)}; {separation(edits[0], prompts[0])}.")
    for learner in PPO_LEARNERS:
        ppo = [r for r in runs if r.strategy == learner]
        if edits and ppo:
            parts.append(versus_ppo(edits[0], ppo, learner))
    return " ".join(parts)


def versus_ppo(edit: Stat, ppo: list[Run], learner: str = "ppo") -> str:
    """Compare an edit strategy with a PPO learner's curves interpolated at the edit runs' mean env steps."""
    at = edit.env_steps
    name = learner_name(learner)
    ppo_at = ppo_stat_at(ppo, at, learner)
    if ppo_at is None:
        return (f"{name}'s curves span {min(r.steps[0] for r in ppo):,.0f}-{max(r.steps[-1] for r in ppo):,.0f} "
                f"env steps, so it cannot be compared with {edit.strategy} at {at:,.0f}.")
    return (f"At {edit.strategy}'s {at:,.0f} env steps {name} reaches {ppo_at.interval()} "
            f"(curves of {ppo_at.runs} seeds interpolated): {edit.strategy} "
            f"{num(edit.iqm - ppo_at.iqm, signed=True)}; {separation(edit, ppo_at)}.")


def learner_name(learner: str) -> str:
    return learner.upper() if learner == "ppo" else learner


def edits_vs_ppo(stats: dict[str, list[Stat]], by_env: dict[str, list[Run]]) -> list[str]:
    """Per PPO learner: on how many environments the best edit is above it at equal steps, and at its final steps."""
    lines = []
    for learner in PPO_LEARNERS:
        equal, final, judged = [0, 0], [0, 0], 0
        for env, env_stats in stats.items():
            edits = [s for s in by_iqm(env_stats) if s.strategy in EDIT_STRATEGIES]
            ppo_final = next((s for s in env_stats if s.strategy == learner), None)
            ppo_at = ppo_stat_at([r for r in by_env[env] if r.strategy == learner], edits[0].env_steps,
                             learner) if edits and ppo_final else None
            if ppo_at is None:
                continue
            judged += 1
            for tally, ppo in ((equal, ppo_at), (final, ppo_final)):
                tally[0] += edits[0].iqm > ppo.iqm
                tally[1] += edits[0].iqm > ppo.iqm and separable(edits[0], ppo)
        if judged:
            steps = sorted({s.env_steps for env_stats in stats.values() for s in env_stats if s.strategy == learner})
            lines.append(f"The best edited strategy is above {learner_name(learner)} at equal env steps on "
                         f"{equal[0]} of {judged} environments (CIs apart on {equal[1]}), and above its final "
                         f"score ({', '.join(f'{x:,.0f}' for x in steps)} env steps) on {final[0]} "
                         f"(CIs apart on {final[1]}).")
    return lines


def tally(winners: dict[str, str | None], stats: dict[str, list[Stat]]) -> str:
    """Wins per strategy over all environments, and where the win is clear of the runner-up's interval."""
    won = {w for w in winners.values() if w is not None}
    counts = {w: sum(v == w for v in winners.values()) for w in sorted(won, key=order)}
    ties = [env for env, w in winners.items() if w is None]
    clear = [env for env, s in stats.items() if len(s) > 1 and separable(*by_iqm(s)[:2])]
    parts = [f"{w} {n}" for w, n in counts.items()]
    if ties:
        parts.append(f"no winner {len(ties)} ({', '.join(ties)})")
    return (f"Wins by IQM over {len(winners)} environments: {', '.join(parts)}; "
            f"separable from the runner-up in {len(clear)} ({', '.join(clear) or 'none'}).")


def edits_over_floor(stats: dict[str, list[Stat]]) -> str | None:
    """On how many environments an edited strategy beats both zero-shot and random, intervals apart."""
    judged, beaten = [], []
    for env, env_stats in stats.items():
        by = {s.strategy: s for s in env_stats}
        edits = [s for s in by_iqm(env_stats) if s.strategy in EDIT_STRATEGIES]
        if "zero-shot" not in by or "random" not in by or not edits:
            continue
        judged.append(env)
        wins = [s.strategy for s in edits
                if all(s.iqm > by[b].iqm and separable(s, by[b]) for b in ("zero-shot", "random"))]
        if wins:
            beaten.append(f"{env} ({', '.join(wins)})")
    if not judged:
        return None
    return (f"An edited strategy beats both zero-shot and random, CIs apart, on {len(beaten)} of {len(judged)} "
            f"environments: {'; '.join(beaten) or 'none'}.")


def intro(runs: list[Run], failed: list[tuple[str, str]], envs: list[str]) -> str:
    models = sorted({r.model for r in runs if r.model})
    return (f"{count(len(runs), 'finished run')} on {count(len(envs), 'environment')}; {len(failed)} failed"
            f"{' (listed at the end, excluded from the statistics)' if failed else ''}. "
            f"Language model: {', '.join(models) or 'none'}. "
            "A run's score is its final mean return over the evaluation episodes (normalised as "
            "(x - random) / (reference - random) where reference scores are given). Per strategy the table gives "
            f"the interquartile mean (IQM) over runs with a 95 % stratified-bootstrap confidence interval "
            f"(rliable, percentile method, {BOOTSTRAP_REPS:,} resamples, seed {BOOTSTRAP_SEED}). "
            "* marks fewer than 4 runs: nothing is trimmed then, so the IQM is the plain mean and the interval "
            "is only indicative (zero width for a single run). Curves show the IQM over seeds with the "
            "interquartile range shaded; prompt baselines and random, which do not learn, are dashed lines.")
