"""Where a run's time goes: the phase clock, the rollout's acting and environment seconds, and a loop run's
phases in its rows, its summary and `llmrl run`'s output."""

from __future__ import annotations

import json
import time

import pytest

from llmrl.cards import get_card
from llmrl.cli import main
from llmrl.phases import PHASES, PhaseClock, describe, efficiency
from llmrl.policy import RandomPolicy
from llmrl.rollout import rollout
from tests.test_loop import BASE


def test_phases_add_up_and_reject_unknown_names():
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("inject"):
            time.sleep(0.02)
    before = clock.snapshot()
    with clock.phase("evaluate"):
        time.sleep(0.01)
    assert clock.seconds["inject"] >= 0.04 and clock.seconds["collect"] == 0.0
    delta = PhaseClock.since(before, clock.snapshot())
    assert delta["inject"] == 0.0 and delta["evaluate"] >= 0.01
    with pytest.raises(ValueError, match="unknown phase"):
        with clock.phase("training"):
            pass
    assert efficiency({"acting": 3.0, "env": 1.0}, 8.0) == 0.5 and efficiency({"acting": 0, "env": 0}, 0) is None
    line = describe({**dict.fromkeys(PHASES, 0.0), "collect": 2.0, "acting": 3.0, "env": 1.0}, 8.0)
    assert line.startswith("wall 8.0s, efficiency 50%") and "collect 2.0s" in line and "setup" not in line


class SlowPolicy(RandomPolicy):
    """Random actions that take a known time to choose."""

    def act(self, texts, slots=None):
        time.sleep(0.005)
        return super().act(texts, slots)


def test_rollout_counts_acting_and_environment_seconds():
    card, _ = get_card("CartPole-v1")
    clock = PhaseClock()
    trajectories = rollout(SlowPolicy(card.action_words, seed=0), card, episodes=3, seed=0, n_envs=1, clock=clock)
    decisions = sum(t.length for t in trajectories)
    assert clock.acting >= 0.005 * decisions  # every act call is counted
    assert 0 < clock.env < clock.acting  # CartPole's steps are cheap beside a 5 ms decision
    assert all(v == 0.0 for v in clock.seconds.values())  # a rollout opens no phase of its own


def test_a_loop_run_times_every_phase(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\n")
    assert main(["run", str(cfg), "--set", f"out={tmp_path / 'out'}", "--set", "steps_per_iteration=200",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = [json.loads(line) for line in (tmp_path / "out" / "iterations.jsonl").read_text().splitlines()]
    for row in rows:
        phases = row["phases"]
        assert set(phases) == {*PHASES, "acting", "env"} and min(phases.values()) >= 0
        assert phases["setup"] == 0.0  # the model is loaded before iteration 0's clock starts
        assert sum(phases[p] for p in PHASES) <= row["wall_seconds"] + 1e-6
        assert phases["acting"] + phases["env"] <= phases["collect"] + phases["evaluate"] + phases["portability"]
        assert (phases["evaluate"] > 0) == (not row["carried"])  # a row that changed nothing plays nothing
        assert (phases["collect"] > 0) == (row["iteration"] > 0)
    assert rows[1]["items"] > 0, "no item in the first iteration: the inject phase went untested"
    assert rows[1]["phases"]["inject"] > 0 and rows[1]["phases"]["locality"] > 0
    assert rows[0]["phases"]["inject"] == rows[0]["phases"]["locality"] == 0
    assert rows[-1]["phases"]["portability"] > 0 and rows[0]["phases"]["portability"] == 0
    totals = summary["phases"]
    assert totals["setup"] > 0
    assert totals["collect"] == pytest.approx(sum(r["phases"]["collect"] for r in rows))
    assert sum(totals[p] for p in PHASES) <= summary["wall_seconds"] + 1e-6
    assert 0 < summary["efficiency"] < 1
    # the plain output ends with the same breakdown
    assert main(["run", str(cfg), "--set", f"out={tmp_path / 'again'}", "--set", "iterations=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("wall ") and "efficiency" in lines[-2] and "evaluate" in lines[-2]
