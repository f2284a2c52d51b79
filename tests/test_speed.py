"""`llmrl bench run`: one loop run's phases and efficiency, and its time to a threshold beside PPO's."""

from __future__ import annotations

import json

import pytest

from llmrl.cli import main
from llmrl.phases import PHASES
from llmrl.speed import default_threshold, first_reaching
from tests.helpers import one_error_line
from tests.test_loop import BASE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_threshold_comes_from_the_environment_and_counts_only_after_learning_began():
    assert default_threshold("CartPole-v1") == 475.0 and default_threshold("LunarLander-v3") == 200.0
    points = [(0, 1.0, 500.0), (500, 9.0, 100.0), (1000, 20.0, 480.0), (1500, 30.0, 500.0)]
    assert first_reaching(points, 475.0) == (1000, 20.0)  # the untrained policy's 500 does not count
    assert first_reaching(points, 600.0) is None


def test_bench_run_times_the_loop_and_ppo_to_the_same_threshold(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\n")
    # the tiny model plays CartPole for about 9 steps: a threshold of 8 is reached at the first evaluation
    assert main(["bench", "run", str(cfg), "--threshold", "8", "--ppo-steps", "2000", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["strategy"] == "context" and got["env_steps"] == 2 * BASE["steps_per_iteration"]
    assert set(got["phases"]) == {*PHASES, "acting", "env"} and got["phases"]["setup"] > 0
    assert got["efficiency"] == pytest.approx((got["phases"]["acting"] + got["phases"]["env"]) / got["wall_seconds"])
    assert got["steps_to_threshold"] == BASE["steps_per_iteration"]  # iteration 0 does not count
    assert got["phases"]["setup"] < got["seconds_to_threshold"] < got["wall_seconds"]
    # PPO evaluates as often as the loop and stopped at its first evaluation at or above 8
    assert got["ppo_steps_to_threshold"] % BASE["steps_per_iteration"] < 8 * 32  # within a rollout of the point
    assert got["ppo_steps_to_threshold"] <= got["ppo_steps"] < 2000
    assert 0 < got["ppo_seconds_to_threshold"] <= got["ppo_wall_seconds"]
    assert got["ratio_to_ppo"] == pytest.approx(got["seconds_to_threshold"] / got["ppo_seconds_to_threshold"])
    # the plain output, and a threshold nothing reaches
    assert main(["bench", "run", str(cfg), "--set", "iterations=1", "--threshold", "1000", "--no-ppo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("context on CartPole-v1 (tiny)") and lines[-2].startswith("wall ")
    assert lines[-1] == "to reach 1000: not reached"


def test_bench_run_errors(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\n")
    assert "--ppo-steps must be >= 1" in one_error_line(capsys, "bench", "run", str(cfg), "--ppo-steps", "0")
    assert "bad --set strategy=magic" in one_error_line(capsys, "bench", "run", str(cfg), "--set", "strategy=magic")
    assert "cannot read config" in one_error_line(capsys, "bench", "run", str(tmp_path / "none.yaml"))


@pytest.mark.parametrize("frozen", [False, True])
def test_bench_throughput_times_a_frozen_model_on_request(frozen, capsys):
    """``--frozen`` times the policy with every weight frozen (as an adapter leaves the model), and says so."""
    args = ["bench", "throughput", "--model", "tiny", "--dtype", "float32", "--steps", "12", "--naive-steps", "1",
            "--n-envs", "4", "--json"]
    assert main(args + (["--frozen"] if frozen else [])) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["frozen"] is frozen and got["decisions"] >= 12 and got["decisions_per_s"] > 0
