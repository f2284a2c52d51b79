"""The experiment report behind ``llmrl report RESULTS_DIR``.

An experiment folder holds one JSON record per run in ``RESULTS_DIR/runs/``
(:class:`~llmrl.record.RunRecord`). :func:`write_report` turns them into
``report.md`` (with the learning curves as PNG files beside it) and a
self-contained ``report.html`` (the same content, figures embedded), so one
file can be mailed or attached to an issue.

The package reads in this order: :mod:`~llmrl.report.runs` (records to runs on
the report's scale), :mod:`~llmrl.report.stats` (IQM and bootstrap CIs),
:mod:`~llmrl.report.summary` (sentences), :mod:`~llmrl.report.tables`,
:mod:`~llmrl.report.figures` and :mod:`~llmrl.report.render` (Markdown and HTML).
"""

from __future__ import annotations

from pathlib import Path

from llmrl.errors import UsageError
from llmrl.folders import atomic_write
from llmrl.report.capacity import capacity_blocks
from llmrl.report.figures import plot_curves
from llmrl.report.phases import phase_blocks
from llmrl.report.render import Block, Bullets, Figure, Heading, Para, Table, duration, slug, to_html, to_markdown
from llmrl.report.runs import experiment_references, load_runs, records_of_kind
from llmrl.report.stats import strategy_stats, winner_of
from llmrl.report.streams import stream_blocks
from llmrl.report.summary import edits_over_floor, edits_vs_ppo, env_summary, intro, tally
from llmrl.report.tables import edit_metrics_blocks, few, overview, per_seed_blocks, pooled, portability_blocks


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
    for kind, make, name in (("stream", stream_blocks, "Stream"), ("capacity", capacity_blocks, "Capacity")):
        records = records_of_kind(results_dir, kind)
        if records:
            title = f"{name} report: {results_dir.resolve().name}"
            blocks, figures, data = make(records, title)
            return {**_write(results_dir, blocks, figures, title), **data}
    references = reference_scores if reference_scores is not None else experiment_references(results_dir)
    runs, failed = load_runs(results_dir, references)
    envs = sorted({r.env for r in runs})
    by_env = {env: [r for r in runs if r.env == env] for env in envs}
    stats = {env: strategy_stats(by_env[env]) for env in envs}

    figures: list[Figure] = []
    env_blocks: list[Block] = []
    for env in envs:
        score = "normalised score" if env in references else "final return"
        env_blocks += [Heading(2, env), Table(
            ["strategy", "runs", f"{score} IQM [95 % CI]", "env steps (mean)", "wall time (mean)"],
            [[s.strategy, f"{s.runs}{few(s.runs)}", s.interval(),
              f"{s.env_steps:,.0f}", duration(s.wall_seconds)] for s in stats[env]])]
        figures.append(Figure(f"{env}: {score} against environment steps", f"curves_{slug(env)}.png",
                               plot_curves(env, by_env[env], stats[env], score.removeprefix("final "))))
        env_blocks.append(figures[-1])
        env_blocks += edit_metrics_blocks(by_env[env])
        env_blocks += portability_blocks(by_env[env])
        env_blocks += per_seed_blocks(by_env[env])
        timing, timing_figures = phase_blocks(env, by_env[env])
        env_blocks += timing
        figures += timing_figures

    winners = {env: winner_of(stats[env]) for env in envs}
    summary = [env_summary(env, stats[env], by_env[env]) for env in envs]
    if len(envs) > 1:
        summary.append(tally(winners, stats))
    floor = edits_over_floor(stats)
    if floor:
        summary.append(floor)
    summary += edits_vs_ppo(stats, by_env)
    normalised = [env for env in envs if env in references]
    aggregate_blocks, aggregate = pooled(by_env, normalised) if len(normalised) > 1 else ([], {})
    title = f"Experiment report: {results_dir.resolve().name}"
    blocks: list[Block] = [Heading(1, title), Para(intro(runs, failed, envs)),
                            Heading(2, "Where each strategy wins"), Bullets(summary or ["No finished runs."]),
                            *(overview(envs, stats, by_env, references) if len(envs) > 1 else []),
                            *aggregate_blocks, *env_blocks]
    if failed:
        blocks += [Heading(2, "Failed runs (excluded from the statistics)"),
                   Bullets([f"{run_id}: {error}" for run_id, error in failed])]

    return {
        **_write(results_dir, blocks, figures, title),
        "winners": winners, "failed": [run_id for run_id, _ in failed],
        "normalised": normalised, "aggregate": aggregate,
        "stats": {env: {s.strategy: {"runs": s.runs, "iqm": s.iqm, "ci": [s.lo, s.hi], "env_steps": s.env_steps,
                                     "wall_seconds": s.wall_seconds} for s in stats[env]} for env in envs},
    }


def _write(results_dir: Path, blocks: list[Block], figures: list[Figure], title: str) -> dict:
    """``report.md``, its figures and ``report.html``, each written atomically; returns their paths."""
    md_path, html_path = results_dir / "report.md", results_dir / "report.html"
    try:
        for fig in figures:
            atomic_write(results_dir / fig.name, fig.png)
        atomic_write(md_path, to_markdown(blocks))
        atomic_write(html_path, to_html(blocks, title))
    except OSError as exc:
        raise UsageError(f"cannot write the report into {results_dir}: {exc.strerror}") from None
    return {"markdown": str(md_path), "html": str(html_path), "figures": [str(results_dir / f.name) for f in figures]}
