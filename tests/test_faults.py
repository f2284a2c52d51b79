"""Faults and bad input end in one ``llmrl: error:`` line and exit code 2, never a traceback (issue 18)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llmrl.cli import main
from llmrl.models import default_model_dir, tiny_model
from tests.helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_folder(tmp_path, tiny):
    """The tiny model saved as a plain transformers folder (safetensors), as a user would pass it."""
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def eval_with(folder) -> list[str]:
    return ["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", str(folder), "--episodes", "1",
            "--max-steps", "2", "--device", "cpu"]


def test_the_saved_tiny_model_loads(model_folder, capsys):
    assert main(eval_with(model_folder) + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["lengths"] == [2]


def test_truncated_weights(model_folder, capsys):
    weights = model_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "cannot load model" in one_error_line(capsys, *eval_with(model_folder))


def test_config_field_of_the_wrong_type(model_folder, capsys):
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "two"}))
    assert "cannot load model" in one_error_line(capsys, *eval_with(model_folder))


def test_pickle_weights_are_refused_even_harmless_ones(model_folder, capsys):
    (model_folder / "model.safetensors").unlink()
    torch.save(tiny_model().state_dict(), model_folder / "pytorch_model.bin")
    assert "holds only pickle weights (pytorch_model.bin); llmrl loads safetensors only" in one_error_line(capsys, *eval_with(model_folder))


def test_garbage_cached_config_for_the_tiny_model(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(default_model_dir(), cache / "models" / default_model_dir().name)
    (cache / "models" / default_model_dir().name / "config.json").write_text("{not json")
    monkeypatch.setenv("LLMRL_CACHE", str(cache))
    assert "llmrl model fetch --force" in one_error_line(capsys, *eval_with("tiny"))


def grid_file(tmp_path, **changes):
    values = {"envs": ["CartPole-v1"], "strategies": ["random"], "seeds": 1, "eval_episodes": 1,
              "eval_max_steps": 5, "out": str(tmp_path / "out"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


@pytest.mark.parametrize("override,message", [
    ("seeds.x=1", "seeds is int 1, not a mapping"),
    ("env_loop.CartPole-v1=3", None),  # a bad value: blamed on the flag below
    ("strategy_options.context.demos.x=1", "demos is int 2, not a mapping"),
])
def test_dotted_set_through_a_value_is_one_line(tmp_path, capsys, override, message):
    path = grid_file(tmp_path, strategy_options={"context": {"demos": 2}})
    err = one_error_line(capsys, "ablate", str(path), "--set", override, "--dry-run")
    assert (message or f"bad --set {override}") in err


@pytest.mark.parametrize("seeds", ["-3", "0", "[]", "[-1]"])
def test_seeds_that_name_no_run_are_refused(tmp_path, capsys, seeds):
    err = one_error_line(capsys, "ablate", str(grid_file(tmp_path)), "--set", f"seeds={seeds}", "--dry-run")
    assert f"bad --set seeds={seeds}: seeds" in err


def test_run_out_that_is_a_file_or_runs_through_one(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"env": "CartPole-v1", "strategy": "context", "model": "tiny", "device": "cpu"}))
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below", tmp_path / ("x" * 300)):
        assert "cannot use" in one_error_line(capsys, "run", str(config), "--set", f"out={out}")


def test_save_trajectories_to_a_bad_path_fails_before_playing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = one_error_line(capsys, "eval", "--env", "CartPole-v1", "--policy", "random", "--episodes", "1",
                         "--save-trajectories", str(tmp_path / "file" / "t.jsonl"))
    assert "cannot write" in err


def test_a_card_whose_environment_is_not_registered(tmp_path, monkeypatch, capsys):
    (tmp_path / "ghost.py").write_text(
        "from llmrl.cards import Card\n\n"
        "class Ghost(Card):\n    env_id = 'Ghost-v0'\n    instructions = 'Haunt.'\n    actions = {'boo': 0}\n\n"
        "class NoWords(Card):\n    env_id = 'CartPole-v1'\n    name = 'Silent-v0'\n    instructions = 'Hush.'\n\n"
        "CARDS = [Ghost(), NoWords()]\n")
    monkeypatch.setenv("LLMRL_CARDS", str(tmp_path))
    monkeypatch.setattr("llmrl.cards._LOADED", False)  # load again, into a registry of this test's own
    monkeypatch.setattr("llmrl.cards._REGISTRY", {})
    assert "Gymnasium cannot make Ghost-v0" in one_error_line(
        capsys, "eval", "--env", "Ghost-v0", "--policy", "random", "--episodes", "1")
    assert main(["envs"]) == 0
    assert "Silent-v0" in (out := capsys.readouterr().out) and "none (the card cannot play" in out


def test_a_grid_of_runs_without_strategies_is_refused(tmp_path, capsys):
    err = one_error_line(capsys, "ablate", str(grid_file(tmp_path, strategies=[])), "--dry-run")
    assert "strategies: give at least one" in err
