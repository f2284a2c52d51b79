"""The README's card example works as written, from a folder named by LLMRL_CARDS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmrl.cli import main
from llmrl.config import EvalConfig, build, load_yaml

ROOT = Path(__file__).resolve().parent.parent


def readme_card() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# my_cards/mountain_car_continuous.py\n.*?)```", text, re.S)
    assert block, "README lost its card example"
    return block.group(1)


def test_readme_card_example_runs(tmp_path):
    folder = tmp_path / "my_cards"
    folder.mkdir()
    (folder / "mountain_car_continuous.py").write_text(readme_card())
    env = {**os.environ, "LLMRL_CARDS": str(folder)}
    proc = subprocess.run([sys.executable, "-m", "llmrl", "eval", "--env", "MountainCarContinuous-v0:strong",
                           "--policy", "random", "--episodes", "2", "--max-steps", "20", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["env"] == "MountainCarContinuous-v0:strong" and result["lengths"] == [20, 20]


def test_card_module_without_cards_list_is_an_error(tmp_path):
    (tmp_path / "broken.py").write_text("x = 1\n")
    proc = subprocess.run([sys.executable, "-m", "llmrl", "envs"], capture_output=True, text=True,
                          env={**os.environ, "LLMRL_CARDS": str(tmp_path)}, timeout=300)
    assert proc.returncode == 2 and "defines no CARDS list" in proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")))
def test_shipped_eval_configs_validate(path):
    cfg = build(EvalConfig, load_yaml(path), source=str(path))
    assert cfg.env and cfg.policy


def test_readme_commands_exist(capsys):
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    for command in set(re.findall(r"\| `llmrl (\w+)", text)):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    capsys.readouterr()


def test_readme_files_exist():
    text = (ROOT / "README.md").read_text()
    # outside the repository (../shared) is the workplace's, not the clone's
    linked = re.findall(r'src="([^"]+)"', text) + re.findall(r"\]\(((?!https?:|#|\.\./)[^)\s]+)\)", text)
    assert linked, "the README links no files"
    missing = [path for path in linked if not (ROOT / path.split("#")[0]).exists()]
    assert not missing, f"README links files the repository lacks: {missing}"
