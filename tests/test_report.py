"""The experiment report: numbers against an independent IQM, winner text, failed runs, a self-contained
HTML file, and that file rendered by headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from llmrl.errors import UsageError
from llmrl.report import write_report

PONG_REFERENCE = {"ALE/Pong-v5": (-20.7, 14.6)}  # Atari random and human scores


def iqm(values: list[float]) -> float:
    """Interquartile mean written out: drop the lowest and highest quarter of runs, average the rest."""
    x = sorted(values)
    cut = len(x) // 4
    return float(np.mean(x[cut:len(x) - cut]))


def bootstrap_ci(values: list[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap of the IQM, resampling runs with replacement (one task, so stratified = plain).

    Drawn from RandomState(seed) as rliable's resampler draws from NumPy's seeded global generator, so the
    report's interval must match to the last digit.
    """
    x, rng = np.array(values), np.random.RandomState(seed)
    return list(np.percentile([iqm(x[rng.randint(0, len(x), len(x))]) for _ in range(reps)], [2.5, 97.5]))


def record(env: str, strategy: str, seed: int, curve: list[tuple[int, float]], kind: str, *,
           env_steps: int | None = None, edit: dict | None = None) -> dict:
    return {"run_id": f"{env.replace('/', '-')}__{strategy}__s{seed}__SmolLM2-135M-Instruct", "status": "ok",
            "env": env, "strategy": strategy, "seed": seed,
            "model": None if kind in ("random", "ppo") else "SmolLM2-135M-Instruct", "kind": kind,
            "config": {}, "versions": {"python": "3.11"}, "started": "2026-11-25T10:00:00Z", "host": "test",
            "wall_seconds": 100.0 + seed, "env_steps": curve[-1][0] if env_steps is None else env_steps,
            "curve": [{"env_steps": s, "mean_return": r, "returns": [r]} for s, r in curve],
            "final_mean_return": curve[-1][1], "final_returns": [curve[-1][1]], "edit": edit, "error": None}


def edit_metrics(seed: int) -> dict:
    return {"reliability": 1.0 - 0.1 * seed, "generalization": 0.9, "locality_kl": 0.0004, "locality_top1": 0.98,
            "edit_seconds": 4.0, "params_touched": 4423658, "items": 3}


def phases(strategy: str, seed: int) -> dict:
    """Seconds per phase of a CartPole run (llmrl.phases): weights spend 40 s injecting, context 0.5 s."""
    return {"setup": 2.0, "collect": 10.0 + seed, "knowledge": 1.0, "inject": 40.0 if strategy == "weights" else 0.5,
            "locality": 3.0, "evaluate": 20.0, "edit_metrics": 5.0, "portability": 0.0, "acting": 25.0, "env": 2.0}


# Final returns by (env, strategy): five seeds unless said otherwise.
FINALS = {
    ("CartPole-v1", "random"): [22.0, 18.0, 25.0, 20.0, 30.0],
    ("CartPole-v1", "zero-shot"): [9.0, 9.4, 9.2, 9.6, 9.0],
    ("CartPole-v1", "few-shot"): [300.0, 420.0, 450.0, 480.0, 500.0],
    ("CartPole-v1", "context"): [500.0, 500.0, 500.0, 500.0, 499.95],
    ("CartPole-v1", "adapter"): [500.0, 400.0, 430.0],  # n < 4: IQM is the plain mean
    ("CartPole-v1", "weights"): [450.0, 470.0, 490.0, 500.0, 500.0],
    ("MountainCar-v0", "zero-shot"): [-200.0] * 5,
    ("MountainCar-v0", "context"): [-150.0, -140.0, -160.0, -145.0, -155.0],
    ("ALE/Pong-v5", "random"): [-20.7],
    ("ALE/Pong-v5", "few-shot"): [-5.0, -3.0, 0.0, -8.0],
    ("FrozenLake-v1", "random"): [0.0] * 5,  # nobody reaches the goal: a tie, not a win for random
    ("FrozenLake-v1", "zero-shot"): [0.0] * 5,
}


def ppo_curve(seed: int) -> list[tuple[int, float]]:
    """MountainCar PPO: -200 at step 0 rising linearly to -110 - 2*seed at 100,000 steps."""
    return [(s, -200.0 + (90.0 - 2 * seed) * s / 100_000) for s in range(0, 100_001, 10_000)]


def make_results(root: Path) -> Path:
    runs = root / "runs"
    runs.mkdir(parents=True)
    records = []
    for (env, strategy), finals in FINALS.items():
        for seed, final in enumerate(finals):
            if strategy in ("context", "adapter", "weights"):
                curve = [(0, 9.35 if env == "CartPole-v1" else -200.0), (1000, (final + 9.35) / 2), (2000, final)]
                records.append(record(env, strategy, seed, curve, "edit", edit=edit_metrics(seed)))
            else:
                kind = "random" if strategy == "random" else "prompt"
                records.append(record(env, strategy, seed, [(0, final)], kind))
    records += [record("MountainCar-v0", "ppo", seed, ppo_curve(seed), "ppo") for seed in range(5)]
    for r in records:  # CartPole's variant: context ported at 100..140, zero-shot at 9; PPO could not play one
        if r["env"] == "CartPole-v1" and r["strategy"] in ("context", "zero-shot"):
            ported = 100.0 + 10 * r["seed"] if r["strategy"] == "context" else 9.0
            r["portability"] = {"heavy-long-pole": {"mean_return": ported, "returns": [ported]}}
        if r["strategy"] == "ppo":
            r["portability"] = {"8x8": {"skipped": "observation space Discrete(64) differs"}}
        if r["env"] == "CartPole-v1" and r["strategy"] in ("context", "weights"):
            r["phases"] = phases(r["strategy"], r["seed"])
    failed = record("CartPole-v1", "context", 5, [(0, 9.35)], "edit")
    failed.update(status="failed", curve=[], final_mean_return=None,
                  error='Traceback (most recent call last):\n  File "loop.py", line 3\n'
                        "RuntimeError: CUDA out of memory\n")
    records.append(failed)
    for r in records:
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return write_report(make_results(tmp_path_factory.mktemp("exp")), PONG_REFERENCE)


def test_iqm_and_ci_match_an_independent_computation(report):
    for (env, strategy), finals in FINALS.items():
        if env in PONG_REFERENCE:
            low, high = PONG_REFERENCE[env]
            finals = [(x - low) / (high - low) for x in finals]
        cell = report["stats"][env][strategy]
        assert cell["runs"] == len(finals)
        assert cell["iqm"] == pytest.approx(iqm(finals))
        assert cell["ci"] == pytest.approx(bootstrap_ci(finals))
        lo, hi = cell["ci"]
        assert min(finals) - 1e-9 <= lo <= cell["iqm"] <= hi <= max(finals) + 1e-9
    assert report["stats"]["CartPole-v1"]["adapter"]["iqm"] == pytest.approx(1330 / 3)  # plain mean of 3
    assert report["stats"]["ALE/Pong-v5"]["random"]["ci"] == [pytest.approx(0.0)] * 2  # one run: zero width
    spread = report["stats"]["CartPole-v1"]["few-shot"]["ci"]
    assert spread[1] - spread[0] > 50  # five different seeds give a real interval


def test_tables_print_those_numbers(report):
    md = Path(report["markdown"]).read_text()
    few = report["stats"]["CartPole-v1"]["few-shot"]
    assert f"| few-shot | 5 | {iqm(FINALS['CartPole-v1', 'few-shot']):.1f} [{few['ci'][0]:.1f}, " \
           f"{few['ci'][1]:.1f}] | 0 | 1 min 42 s |" in md
    assert "| adapter | 3\\* | 443.3 [" in md  # n < 4 marked
    assert "normalised score IQM [95 % CI]" in md and "final return IQM [95 % CI]" in md
    # strategies in the fixed order, and each table only lists what ran on that environment
    cartpole = md.split("## CartPole-v1")[1].split("Edit metrics")[0]
    assert re.findall(r"^\| ([a-z-]+) \| \d", cartpole, flags=re.M) == [
        "random", "zero-shot", "few-shot", "context", "adapter", "weights"]
    # edit metrics: mean over seeds (reliability 1.0, 0.9, ..., 0.6 -> 0.80 for five context seeds)
    assert re.search(r"^\| context \| 5 \| 0\.80 \| 0\.90 \| 0\.0004 \| 0\.980 \| 4\.0 \| 4,423,658 \|$", md, re.M)


def test_portability_table(report):
    md = Path(report["markdown"]).read_text()
    cartpole = md.split("## CartPole-v1")[1].split("\n## ")[0]
    table = cartpole.split("Portability: final return on the card's variants")[1].split("Final return per seed")[0]
    rows = re.findall(r"^\| ([a-z-]+) \| (.*) \|$", table, flags=re.M)
    assert rows[0] == ("strategy", "heavy-long-pole")
    ctx = dict(rows)["context"]
    assert ctx.startswith(f"{iqm([100.0, 110.0, 120.0, 130.0, 140.0]):.1f} [")  # IQM 120.0 over five seeds
    assert dict(rows)["zero-shot"] == "9.00 [9.00, 9.00]"
    assert {s for s, _ in rows[1:]} == {"zero-shot", "context"}  # no row for strategies without variant returns
    assert "Portability" not in md.split("## MountainCar-v0")[1].split("\n## ")[0]  # PPO's was skipped


def test_phase_table_and_bars(report):
    md = Path(report["markdown"]).read_text()
    cartpole = md.split("## CartPole-v1")[1].split("\n## ")[0]
    table = cartpole.split("Where a run's time goes")[1]
    rows = {r[0]: r[1:] for r in re.findall(r"^\| ([a-z-]+) \| (.*) \|$", table, flags=re.M)}
    header = [c.strip() for c in rows.pop("strategy")[0].split("|")]
    # portability never took time in these runs: no column for it
    assert header == ["runs", "wall s", "efficiency", "setup", "collect", "knowledge", "inject", "locality",
                      "evaluate", "edit metrics"]
    assert set(rows) == {"context", "weights"}  # only the runs that timed their phases
    walls = [100.0 + s for s in range(5)]
    for strategy, inject in (("context", 0.5), ("weights", 40.0)):
        cells = dict(zip(header, (c.strip() for c in rows[strategy][0].split("|"))))
        assert cells["runs"] == "5" and cells["wall s"] == f"{np.mean(walls):,.1f}"
        assert cells["efficiency"] == f"{np.mean([27.0 / w for w in walls]):.0%}"
        assert cells["collect"] == "12.0" and cells["inject"] == f"{inject:,.1f}"
    assert "phases_CartPole-v1.png" in cartpole
    assert (Path(report["markdown"]).parent / "phases_CartPole-v1.png").exists()
    assert "Where a run's time goes" not in md.split("## MountainCar-v0")[1]  # no run there timed its phases


def test_winner_text(report):
    assert report["winners"] == {"ALE/Pong-v5": "few-shot", "CartPole-v1": "context", "FrozenLake-v1": None,
                                 "MountainCar-v0": "ppo"}
    md = Path(report["markdown"]).read_text()
    summary = md.split("## Where each strategy wins")[1].split("\n## ")[0]
    cart = next(line for line in summary.splitlines() if line.startswith("- CartPole-v1"))
    # context 500 beats weights' IQM (470+490+500)/3 by 13.3, inside weights' interval
    assert "context 500.0 [" in cart and "wins, 13.3 above weights 486.7 [" in cart
    assert "CIs overlap: not separable" in cart
    assert "Best edited strategy context 500.0" in cart and "vs best prompt baseline few-shot 450.0" in cart
    mc = next(line for line in summary.splitlines() if line.startswith("- MountainCar-v0"))
    assert "ppo -114.0 [" in mc and "CIs do not overlap" in mc  # IQM of -112, -114, -116 (seeds 1-3)
    assert "vs best prompt baseline zero-shot -200.0 [-200.0, -200.0]: +50.0" in mc
    # PPO interpolated at the context runs' 2,000 steps: IQM over seeds 1-3 of -200 + (90 - 2 s) / 50
    ppo_at = iqm([-200.0 + (90.0 - 2 * s) * 2_000 / 100_000 for s in range(5)])
    assert f"At context's 2,000 env steps PPO reaches {ppo_at:.1f} [" in mc
    assert f"context {-150.0 - ppo_at:+.1f}; CIs do not overlap" in mc
    assert "- FrozenLake-v1: no winner; 2 strategies tie at IQM 0.00 (random, zero-shot)." in summary
    assert "Wins by IQM over 4 environments: few-shot 1, context 1, ppo 1, no winner 1 (FrozenLake-v1); " \
           "separable from the runner-up in 1 (MountainCar-v0)" in summary
    # Only CartPole ran zero-shot, random and an edit; adapter's 3 runs are too few to count as separable.
    assert "An edited strategy beats both zero-shot and random, CIs apart, on 1 of 1 environments: " \
           "CartPole-v1 (context, weights)." in summary
    # MountainCar alone has PPO and edits: context -150 is above PPO's -198 at 2,000 steps, below its final -114.
    assert "The best edited strategy is above PPO at equal env steps on 1 of 1 environments (CIs apart on 1), " \
           "and above its final score (100,000 env steps) on 0 (CIs apart on 0)." in summary


def test_failed_run_listed_and_excluded(report):
    md = Path(report["markdown"]).read_text()
    failures = md.split("## Failed runs")[1]
    assert "CartPole-v1\\_\\_context\\_\\_s5\\_\\_SmolLM2-135M-Instruct: RuntimeError: CUDA out of memory" in failures
    assert report["failed"] == ["CartPole-v1__context__s5__SmolLM2-135M-Instruct"]
    assert report["stats"]["CartPole-v1"]["context"]["runs"] == 5
    html = Path(report["html"]).read_text()
    assert "CartPole-v1__context__s5__SmolLM2-135M-Instruct: RuntimeError: CUDA out of memory" in html


def test_html_is_self_contained_and_markdown_links_the_pngs(report):
    html = Path(report["html"]).read_text()
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", html)
    # a curve per environment, and CartPole's phase bars (its only runs that timed their phases)
    assert len(sources) == len(report["figures"]) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|file:|<link|<script", html)
    md = Path(report["markdown"]).read_text()
    for png_path, src in zip(report["figures"], sources):
        png = Path(png_path)
        assert png.parent == Path(report["markdown"]).parent
        assert f"]({png.name})" in md
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "curves_ALE_Pong-v5.png" in md


def test_same_runs_same_report(report, tmp_path):
    again = write_report(make_results(tmp_path), PONG_REFERENCE)
    assert again["stats"] == report["stats"]
    # the same bytes after the title line, which names the folder
    first, second = (Path(r["markdown"]).read_text().split("\n", 1)[1] for r in (report, again))
    assert first == second
    assert [Path(f).read_bytes() for f in again["figures"]] == [Path(f).read_bytes() for f in report["figures"]]


def test_unusable_folders_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no runs in"):
        write_report(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "broken.json").write_text('{"run_id": ')
    with pytest.raises(UsageError, match="broken.json: not a readable JSON run record"):
        write_report(tmp_path)
    (tmp_path / "runs" / "broken.json").write_text('{"status": "ok", "env": "CartPole-v1"}')
    with pytest.raises(UsageError, match="missing or malformed field"):
        write_report(tmp_path)


def test_html_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: CI must render the report (make test installs it as root)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); `make test` installs it as root")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,3000",
                    Path(report["html"]).as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 0, "chromium wrote no screenshot"
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1280)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the screenshot is (nearly) one flat colour"
    # the first figure is drawn: rows with its coloured curve pixels (not grey text on white)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    assert saturated.any(axis=1).sum() > 100


def test_reference_scores_come_from_the_experiment_config(tmp_path):
    """`llmrl report DIR` normalises by the experiment's reference_scores without being told."""
    root = make_results(tmp_path)
    low, high = PONG_REFERENCE["ALE/Pong-v5"]
    config = {"reference_scores": {"ALE/Pong-v5": {"random": low, "human": high}}}
    (root / "experiment.json").write_text(json.dumps({"config": config, "runs": 1, "grid": "x"}))
    by_default = write_report(root)
    assert by_default["stats"]["ALE/Pong-v5"] == write_report(root, PONG_REFERENCE)["stats"]["ALE/Pong-v5"]
    raw = write_report(root, {})["stats"]["ALE/Pong-v5"]["random"]["iqm"]
    assert by_default["stats"]["ALE/Pong-v5"]["random"]["iqm"] == pytest.approx((raw - low) / (high - low))


def test_overview_lays_out_every_environments_cells(tmp_path):
    """The overview table: one row per strategy, one column per environment, the per-environment IQMs."""
    refs = {"ALE/Pong-v5": (-20.0, 20.0)}  # CartPole stays raw
    runs = tmp_path / "runs"
    runs.mkdir()
    records = [record("CartPole-v1", "zero-shot", s, [(0, 9.0 + s)], "prompt") for s in range(4)]
    records += [record("ALE/Pong-v5", "zero-shot", s, [(0, -20.0 + 4 * s)], "prompt") for s in range(4)]
    records += [record(env, "context", s, [(0, 0.0), (2_000, 100.0 + s)], "edit") for env in ("CartPole-v1",)
                for s in range(2)]
    records += [record("CartPole-v1", "ppo", s, [(0, 0.0), (4_000, 200.0)], "ppo") for s in range(4)]
    records += [record("ALE/Pong-v5", "ppo", s, [(0, -20.0), (4_000, 0.0)], "ppo") for s in range(4)]
    for r in records:
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    out = write_report(tmp_path, refs)
    md = Path(out["markdown"]).read_text()
    section = md.split("## Overview")[1].split("\n## ")[0]
    assert "normalised on ALE/Pong-v5, raw returns elsewhere" in section
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["strategy"] == ["ALE/Pong-v5", "CartPole-v1"]
    # the fixed strategy order, though context runs only on the second environment
    assert list(rows) == ["strategy", "zero-shot", "context", "ppo", "ppo at the edits' steps"]
    for env, column in zip(rows["strategy"], zip(*(rows[s] for s in ("zero-shot", "context", "ppo")))):
        table = md.split(f"## {env}\n")[1].split("\n## ")[0]
        for strategy, cell in zip(("zero-shot", "context", "ppo"), column):
            line = next((r for r in table.splitlines() if r.startswith(f"| {strategy} |")), None)
            if line is None:
                assert cell == "-"
            else:  # the environment table's IQM cell, starred like its run count
                runs_cell, iqm_cell = line.split(" | ")[1:3]
                assert cell == iqm_cell + ("\\*" if runs_cell.endswith("\\*") else "")
    assert rows["context"][0] == "-" and rows["context"][1].endswith("\\*")  # 2 runs
    assert rows["zero-shot"][0].startswith("0.15 [")  # (-20, -16, -12, -8) normalised: mean of 0, .1, .2, .3
    # PPO at the context runs' 2,000 steps: half way up its line to 200.
    assert rows["ppo at the edits' steps"] == ["-", "100.0 [100.0, 100.0]"]


def test_aggregate_over_normalised_environments(tmp_path):
    """Atari-style: normalised scores pooled over games, PPO also at the edits' steps; equal runs per game."""
    refs = {"ALE/Pong-v5": (-20.0, 20.0), "ALE/Breakout-v5": (0.0, 10.0)}
    finals = {("ALE/Pong-v5", "zero-shot"): [-20.0, -18.0, -16.0, -14.0, -12.0],
              ("ALE/Breakout-v5", "zero-shot"): [0.0, 1.0, 2.0, 3.0, 4.0],
              ("ALE/Pong-v5", "context"): [0.0, 4.0, 8.0, 12.0],
              ("ALE/Breakout-v5", "context"): [5.0, 6.0, 7.0, 8.0, 9.0]}  # 5 runs, but Pong has 4: 4 used
    runs = tmp_path / "runs"
    runs.mkdir()
    records = []
    for (env, strategy), values in finals.items():
        for seed, final in enumerate(values):
            curve = [(0, final)] if strategy == "zero-shot" else [(0, refs[env][0]), (8_000, final)]
            records.append(record(env, strategy, seed, curve, "prompt" if strategy == "zero-shot" else "edit"))
    for env, (low, high) in refs.items():  # PPO: random at 0, human at 100,000 steps, linear
        records += [record(env, "ppo", seed, [(0, low), (100_000, high)], "ppo") for seed in range(4)]
    for r in records:
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    out = write_report(tmp_path, refs)

    def norm(env, x):
        return (x - refs[env][0]) / (refs[env][1] - refs[env][0])

    agg = out["aggregate"]
    context = [norm(e, x) for e in refs for x in finals[e, "context"][:4]]
    assert agg["context"]["runs_per_env"] == 4
    assert agg["context"]["iqm"] == pytest.approx(iqm(context))
    assert agg["context"]["mean"] == pytest.approx(np.mean(context))
    zero = [norm(e, x) for e in refs for x in finals[e, "zero-shot"]]
    assert agg["zero-shot"]["iqm"] == pytest.approx(iqm(zero)) and agg["zero-shot"]["runs_per_env"] == 5
    assert agg["ppo"]["iqm"] == pytest.approx(1.0)  # final: human score on both games
    assert agg["ppo at the edits' steps"]["iqm"] == pytest.approx(0.08)  # 8,000 of 100,000 steps
    for cell in agg.values():
        for key, ci in (("iqm", cell["ci"]), ("mean", cell["mean_ci"])):
            assert ci[0] <= cell[key] <= ci[1]
    assert agg["context"]["ci"][1] - agg["context"]["ci"][0] > 0.05
    md = Path(out["markdown"]).read_text()
    section = md.split("## Across environments")[1].split("\n## ")[0]
    assert "pooled over 2 environments (ALE/Breakout-v5, ALE/Pong-v5)" in section
    c = agg["context"]
    assert f"| context | 4 | {c['iqm']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}] | {c['mean']:.2f} [" in section


def test_every_strategy_has_its_own_colour():
    from llmrl.report.figures import COLOURS
    from llmrl.strategies import NAMES

    assert set(COLOURS) == set(NAMES) and len(set(COLOURS.values())) == len(NAMES)


def test_per_seed_table_gives_raw_final_returns(report):
    """Normalised environments too: the table quotes the records' returns, not the report's scale."""
    md = Path(report["markdown"]).read_text()
    pong = md.split("## ALE/Pong-v5", 1)[1].split("\n## ", 1)[0]
    assert "| strategy | seed 0 | seed 1 | seed 2 | seed 3 |" in pong
    assert "| few-shot | -5.00 | -3.00 | 0.00 | -8.00 |" in pong
    assert "| random | -20.7 | - | - | - |" in pong
    cartpole = md.split("## CartPole-v1", 1)[1].split("\n## ", 1)[0]
    assert "| adapter | 500.0 | 400.0 | 430.0 | - | - |" in cartpole  # the failed seed-5 context run is left out
    assert "seed 5" not in cartpole
