"""docs/cards.md plays as written.

Every example file on the page (a ```python block whose first line is ``# PATH``)
is copied into a temporary folder, named by ``LLMRL_CARDS`` as the page says,
and played through ``python -m llmrl`` in a subprocess; the page's claims about
folder rules, few-shot demonstrations, seeds and errors are checked against
what the code does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmrl.baselines import few_shot_examples
from llmrl.cards import Card, card_paths
from llmrl.config import load_yaml
from llmrl.errors import UsageError
from llmrl.evaluate import eval_seed

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cards.md"
ARGS = ["--policy", "random", "--episodes", "2", "--max-steps", "20", "--json"]


def doc_text() -> str:
    return DOC.read_text()


def doc_files() -> dict[str, str]:
    """The page's example files: PATH -> the block's text, first line included."""
    return {path: code for code, path in re.findall(r"```python\n(# (\S+)\n.*?)```", doc_text(), re.DOTALL)}


def doc_jsonl() -> str:
    (block,) = re.findall(r"```jsonl\n(.*?)```", doc_text(), re.DOTALL)
    return block


def write(tmp_path: Path, *paths: str) -> None:
    files = doc_files()
    for path in paths:
        assert path in files, f"docs/cards.md lost its example {path}"
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path])


def llmrl(tmp_path: Path, *args: str, cards: str = "my_cards", pythonpath: str | None = None,
          ) -> subprocess.CompletedProcess:
    """``python -m llmrl ARGS`` run in ``tmp_path`` with LLMRL_CARDS (and PYTHONPATH) set as the page says."""
    env = {**os.environ, "LLMRL_CARDS": str(tmp_path / cards), "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / pythonpath), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "llmrl", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


def result(proc: subprocess.CompletedProcess) -> dict | list:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def episodes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_card_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_names_every_card_attribute_and_method():
    text = doc_text()
    attributes = [a for a in Card.__annotations__ if not a.startswith("_")]
    methods = [m for m, v in vars(Card).items() if not m.startswith("_") and callable(v)]
    assert {"env_id", "requires", "observations", "version", "describe", "potential", "build", "check"} <= set(
        attributes + methods)
    missing = [name for name in attributes + methods if f"`{name}`" not in text and f"`{name}(" not in text]
    assert not missing, f"docs/cards.md does not document {missing}"


def test_mountain_car_card_plays_with_its_variant(tmp_path):
    write(tmp_path, "my_cards/mountain_car_continuous.py")
    listed = {row["name"]: row for row in result(llmrl(tmp_path, "envs", "--json"))}
    assert listed["MountainCarContinuous-v0"]["actions"] == ["push left", "coast", "push right"]
    assert listed["MountainCarContinuous-v0"]["variants"] == ["strong"]
    plain = result(llmrl(tmp_path, "eval", "--env", "MountainCarContinuous-v0", *ARGS,
                         "--save-trajectories", "plain.jsonl"))
    strong = result(llmrl(tmp_path, "eval", "--env", "MountainCarContinuous-v0:strong", *ARGS,
                          "--save-trajectories", "strong.jsonl"))
    assert plain["lengths"] == strong["lengths"] == [20, 20]
    assert strong["env"] == "MountainCarContinuous-v0:strong"
    a, b = episodes(tmp_path / "plain.jsonl"), episodes(tmp_path / "strong.jsonl")
    # the same seeds and random draws press the same words; the stronger engine moves the car further
    assert [[s["action"] for s in e["steps"]] for e in a] == [[s["action"] for s in e["steps"]] for e in b]
    assert [[s["text"] for s in e["steps"]] for e in a] != [[s["text"] for s in e["steps"]] for e in b]
    situations = {s["situation"] for e in a + b for s in e["steps"]}
    assert situations <= {"the car rolls left", "the car rolls right"}
    assert all(s["text"].startswith("Car at ") for e in a for s in e["steps"])

    write(tmp_path, "try_card.py")
    env = {**os.environ, "LLMRL_CARDS": str(tmp_path / "my_cards"), "OMP_NUM_THREADS": "1"}
    tried = subprocess.run([sys.executable, "try_card.py"], check=False, capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert tried.returncode == 0, tried.stderr
    printed = tried.stdout.strip().splitlines()
    assert len(printed) == 3 and all(line.startswith("('Car at ") for line in printed)
    assert printed[0] != printed[2]  # pushing right moves the car


def test_custom_environment_registered_through_requires(tmp_path):
    write(tmp_path, "my_envs/corridor_env.py", "my_cards/corridor.py")
    out = result(llmrl(tmp_path, "eval", "--env", "Corridor-v0:long", "--seed", "7", *ARGS,
                       "--save-trajectories", "long.jsonl", pythonpath="my_envs"))
    played = episodes(tmp_path / "long.jsonl")
    assert out["env"] == "Corridor-v0:long" and [e["seed"] for e in played] == [7, 8]  # episode i: seed S + i
    assert [len(e["steps"]) for e in played] == out["lengths"] and all(n <= 20 for n in out["lengths"])
    for e in played:
        assert e["return"] == (1.0 if e["terminated"] else 0.0)  # the door pays 1 and ends the episode
        assert all(" of 9; the door is in cell 9." in s["text"] for s in e["steps"])  # the variant's 9 cells
    # requires is imported only when the environment is made: the card lists without corridor_env ...
    names = [row["name"] for row in result(llmrl(tmp_path, "envs", "--json"))]
    assert "Corridor-v0" in names
    # ... and playing it without corridor_env importable fails
    proc = llmrl(tmp_path, "eval", "--env", "Corridor-v0", *ARGS)
    assert proc.returncode != 0 and "No module named 'corridor_env'" in proc.stderr


def test_helper_module_rules(tmp_path):
    write(tmp_path, "my_cards/_units.py", "my_cards/pendulum.py")
    out = result(llmrl(tmp_path, "eval", "--env", "Pendulum-v1", *ARGS, "--save-trajectories", "p.jsonl"))
    assert out["lengths"] == [20, 20] and all(r < 0 for r in out["returns"])  # Pendulum's costs
    texts = [s["text"] for e in episodes(tmp_path / "p.jsonl") for s in e["steps"]]
    assert all(re.search(r"turning (still|[\d.]+ rad/s (counter)?clockwise)\.", t) for t in texts)

    # Without its leading _, the helper is read as a card module.
    (tmp_path / "my_cards" / "units.py").write_text(doc_files()["my_cards/_units.py"])
    proc = llmrl(tmp_path, "envs")
    assert proc.returncode == 2 and "units.py defines no CARDS list" in proc.stderr
    (tmp_path / "my_cards" / "units.py").unlink()

    # Without the sys.path line, the helper beside the card cannot be imported.
    card = tmp_path / "my_cards" / "pendulum.py"
    lines = card.read_text().splitlines(keepends=True)
    card.write_text("".join(line for line in lines if not line.startswith("sys.path.insert")))
    proc = llmrl(tmp_path, "envs")
    assert proc.returncode == 2
    assert "cannot load card module" in proc.stderr and "No module named '_units'" in proc.stderr


def test_card_module_without_cards_list_is_an_error(tmp_path):
    (tmp_path / "my_cards").mkdir()
    (tmp_path / "my_cards" / "broken.py").write_text("x = 1\n")
    proc = llmrl(tmp_path, "envs")
    assert proc.returncode == 2 and "defines no CARDS list" in proc.stderr


def test_a_later_card_replaces_a_builtin_one(tmp_path):
    (tmp_path / "my_cards").mkdir()
    (tmp_path / "my_cards" / "cartpole.py").write_text(
        "from llmrl.cards import Card\n\n\n"
        "class CartPole(Card):\n"
        "    env_id = 'CartPole-v1'\n"
        "    instructions = 'Balance the pole.'\n"
        "    actions = {'push left': 0, 'push right': 1}\n\n"
        "    def describe(self, obs, env):\n        return 'A cart.'\n\n"
        "    def situation(self, obs, env):\n        return 'the pole is up'\n\n\n"
        "CARDS = [CartPole()]\n")
    listed = {row["name"]: row for row in result(llmrl(tmp_path, "envs", "--json"))}
    assert listed["CartPole-v1"]["actions"] == ["push left", "push right"]


def test_folder_rules(tmp_path, monkeypatch):
    folder = tmp_path / "my_cards"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.py", "a.py", "_helper.py", "__init__.py", "notes.txt", "sub/deeper.py"):
        (folder / name).write_text("")
    single = tmp_path / "_single.py"
    single.write_text("")
    monkeypatch.setenv("LLMRL_CARDS", os.pathsep.join([str(folder), "", str(single)]))
    mine = [p for p in card_paths() if tmp_path in p.parents]
    # top-level .py files in name order, none starting with _, no subfolders; a named file whatever its name
    assert mine == [folder / "a.py", folder / "b.py", single]
    monkeypatch.setenv("LLMRL_CARDS", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="is neither a folder nor a .py file"):
        card_paths()


def test_trajectory_file_gives_the_documented_few_shot_examples(tmp_path, monkeypatch):
    write(tmp_path, "my_envs/corridor_env.py", "my_cards/corridor.py")
    monkeypatch.syspath_prepend(str(tmp_path / "my_envs"))
    card = load_card_module(tmp_path / "my_cards" / "corridor.py", "docs_cards_corridor").CARDS[0]
    demos = tmp_path / "corridor_demos.jsonl"
    demos.write_text(doc_jsonl())
    lines = [json.loads(line) for line in doc_jsonl().splitlines() if line.strip()]
    assert [(e["seed"], sum(s["reward"] for s in e["steps"])) for e in lines] == [(9, 0.0), (4, 1.0)]

    def pair(episode: int, step: int) -> tuple[str, str]:
        s = lines[episode]["steps"][step]
        return s["text"], s["action"]

    # best return first, steps spread through it, then the next episode fills what is missing
    assert few_shot_examples(card, 3, demos) == [pair(1, 0), pair(1, 1), pair(0, 0)]
    assert pair(0, 0)[1] == "back"  # nothing filters a bad move of a worse episode
    assert few_shot_examples(card, 2, demos) == [pair(1, 0), pair(1, 1)]
    assert few_shot_examples(card, 3) == list(card.demonstrations)  # the card's own: the first k, here both

    # every text on the page is one the card produces, with a situation from its list
    env = card.make_env()
    shown = {card.text(cell, env) for cell in range(env.unwrapped.length)}
    env.close()
    steps = [(s["text"], s["situation"]) for e in lines for s in e["steps"]]
    assert set(steps) <= shown
    assert {text for text, _ in card.demonstrations} <= {text for text, _ in shown}
    assert {word for _, word in card.demonstrations} <= set(card.actions)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(doc_jsonl().replace('"action": "back"', '"action": "jump"', 1))
    with pytest.raises(UsageError, match=r"bad.jsonl:1: not a trajectory line"):
        few_shot_examples(card, 3, bad)


def test_saved_trajectories_have_the_documented_keys_and_feed_few_shot(tmp_path):
    write(tmp_path, "my_envs/corridor_env.py", "my_cards/corridor.py")
    out = result(llmrl(tmp_path, "eval", "--env", "Corridor-v0", "--seed", "3", *ARGS,
                       "--save-trajectories", "saved.jsonl", pythonpath="my_envs"))
    played = episodes(tmp_path / "saved.jsonl")
    assert [e["seed"] for e in played] == [3, 4] and [len(e["steps"]) for e in played] == out["lengths"]
    assert all(set(e) == {"seed", "steps", "terminated", "truncated", "end_potential", "return"} for e in played)
    assert all(set(s) == {"text", "situation", "action", "reward", "potential"} for e in played for s in e["steps"])
    # the page's few-shot command, on the page's file, with the tiny test model
    (tmp_path / "corridor_demos.jsonl").write_text(doc_jsonl())
    assert "--trajectories corridor_demos.jsonl --shots 3" in doc_text()
    few = result(llmrl(tmp_path, "eval", "--env", "Corridor-v0", "--policy", "few-shot", "--trajectories",
                       "corridor_demos.jsonl", "--shots", "3", "--model", "tiny", "--device", "cpu",
                       "--episodes", "1", "--max-steps", "5", "--json", pythonpath="my_envs"))
    assert few["policy"] == "few-shot" and few["model"] == "tiny" and few["episodes"] == 1


def test_evaluation_seeds_as_documented():
    assert "1_000_000 + 1_000 * s" in doc_text()
    assert [eval_seed(s) for s in (0, 1, 4)] == [1_000_000, 1_001_000, 1_004_000]
    # run seed 10 explores, in iteration 10, from seed s * 100_000 + it * 1_000: its own evaluation seeds
    assert 10 * 100_000 + 10 * 1_000 == eval_seed(10)


ATARI_CHECK = """
import json
from llmrl.baselines.ppo import load_hyperparameters
from llmrl.cards import get_card
card, _ = get_card("ALE/Skiing-v5")
env = card.make_env(observation="pixels")
obs, _ = env.reset(seed=0)
text, situation = card.text(obs, env)
env.close()
print(json.dumps({"shape": list(obs.shape), "text": text, "situation": situation, "situations": card.situations,
                  "objects": load_hyperparameters("ALE/Skiing-v5")["source"],
                  "pixels": load_hyperparameters("ALE/Skiing-v5", "pixels")["source"]}))
"""


@pytest.mark.skipif(importlib.util.find_spec("ocatari") is None, reason="the atari extra (OCAtari) is not installed")
@pytest.mark.skipif(importlib.util.find_spec("llmrl.envs") is None,
                    reason="llmrl.envs (the built-in cards as a package) is not importable in this install")
def test_atari_card_for_an_unlisted_game(tmp_path):
    write(tmp_path, "atari_cards/skiing.py", "look_at_objects.py")
    look = subprocess.run([sys.executable, "look_at_objects.py"], check=False, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert look.returncode == 0, look.stderr
    printed = look.stdout.strip().splitlines()
    assert printed[0] == "['NOOP', 'RIGHT', 'LEFT']" and len(printed) == 4
    assert "('Player'" in printed[1] and "('Flag'" in printed[1]

    out = result(llmrl(tmp_path, "eval", "--env", "ALE/Skiing-v5", *ARGS, "--save-trajectories", "ski.jsonl",
                       cards="atari_cards"))
    assert out["lengths"] == [20, 20] and all(r < 0 for r in out["returns"])  # Skiing pays minus the time
    played = episodes(tmp_path / "ski.jsonl")
    assert {s["action"] for e in played for s in e["steps"]} <= {"keep going", "steer left", "steer right"}
    assert any(s["text"].startswith("The next gate is ") for e in played for s in e["steps"])

    env = {**os.environ, "LLMRL_CARDS": str(tmp_path / "atari_cards"), "OMP_NUM_THREADS": "1"}
    check = subprocess.run([sys.executable, "-c", ATARI_CHECK], check=False, capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert check.returncode == 0, check.stderr
    seen = json.loads(check.stdout.splitlines()[-1])
    assert seen["shape"] == [4, 84, 84]  # what ppo-pixels reads
    assert seen["situation"] in seen["situations"] and seen["text"].endswith(f"Situation: {seen['situation']}.")
    # PPO's hyper-parameters come through the family: atari.yaml, atari-pixels.yaml
    shipped = {name: load_yaml(ROOT / "configs" / "ppo" / f"{name}.yaml")["source"]
               for name in ("atari", "atari-pixels")}
    assert seen["objects"] == shipped["atari"] and seen["pixels"] == shipped["atari-pixels"]
