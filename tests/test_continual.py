"""A continual stream end to end on the tiny model (llmrl/continual/stream.py, `llmrl continual`)."""

from __future__ import annotations

import json

import pytest
import yaml

from llmrl.cli import main
from llmrl.continual.metrics import normalise, stream_metrics
from tests.helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

STREAM = {
    "stages": [{"env": "CartPole-v1", "iterations": 2, "steps_per_iteration": 48},
               {"env": "CartPole-v1:mirrored", "iterations": 1, "steps_per_iteration": 48},
               {"env": "CartPole-v1", "iterations": 1, "steps_per_iteration": 48}],
    "strategy": "context", "model": "tiny", "device": "cpu", "dtype": "float32", "n_envs": 4, "eval_episodes": 3,
    "eval_max_steps": 25, "loop": {"min_support": 2, "z": 0.5, "locality_prompts": 4}, "target": {"CartPole-v1": 9},
}


def stream_file(tmp_path, **changes):
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump({**STREAM, "out": str(tmp_path / "out"), **changes}))
    return path


def test_a_stream_end_to_end(tmp_path, capsys):
    assert main(["continual", str(stream_file(tmp_path)), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["stages"] == ["CartPole-v1", "CartPole-v1:mirrored", "CartPole-v1"]
    raw = got["raw_matrix"]
    assert len(raw) == 4 and all(len(row) == 3 for row in raw)  # untouched + one row per stage
    assert all(row[0] == row[2] for row in raw)  # a task that recurs is the same task, scored once per row
    assert got["stage_returns"] == [raw[i + 1][i] for i in range(3)]
    # the references: the table policy (mirrored on the mirrored stage) plays every stage to the step cap
    assert got["reference_returns"] == [25.0, 25.0, 25.0]
    assert got["matrix"] == normalise(raw, got["random_returns"], got["reference_returns"])
    metrics = stream_metrics(got["matrix"])
    assert (got["acc"], got["bwt"], got["fwt"], got["forgetting"]) == (metrics.acc, metrics.bwt, metrics.fwt,
                                                                       metrics.forgetting)
    assert got["env_steps"] == 4 * 48 and got["strategy"] == "context" and got["accumulate"] == "rebuild"
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == [0, 1, 2, 3] and [line["row"] for line in lines] == raw
    first = lines[1]
    assert [p["env_steps"] for p in first["curve"]] == [0, 48, 96] and first["curve"][0]["mean_return"] == raw[0][0]
    assert first["steps_to_target"] == next(p["env_steps"] for p in first["curve"] if p["mean_return"] >= 9)
    assert "locality_kl" in first
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    items = json.loads((out / "items.json").read_text())
    assert len(items["items"]) == lines[-1]["items"]


def test_stream_input_errors(tmp_path, capsys):
    assert "a stream's stages are one card" in one_error_line(capsys, "continual", str(stream_file(
        tmp_path, stages=[{"env": "CartPole-v1", "iterations": 1, "steps_per_iteration": 8},
                          {"env": "Acrobot-v1", "iterations": 1, "steps_per_iteration": 8}])))
    assert "the loop block may not set seed" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "loop.seed=3")
    assert "target names environments that are no stage: Acrobot-v1" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "target.Acrobot-v1=1")
    assert "no variant 'upside-down'" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set",
        "stages=[{env: 'CartPole-v1:upside-down', iterations: 1, steps_per_iteration: 8}]", "--set", "target={}")
    assert "bad --set loop.gamma=2" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "loop.gamma=2")
