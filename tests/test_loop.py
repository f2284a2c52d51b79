"""The editing loop end to end on the tiny model, and `llmrl run`'s output and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmrl.ablate import expand, load_config
from llmrl.cards import Card, get_card
from llmrl.cli import main
from llmrl.config import LoopConfig, apply_overrides, load_yaml
from llmrl.continual.stream import StreamConfig
from llmrl.learner import make_injector

BASE = dict(env="CartPole-v1", strategy="context", model="tiny", device="cpu", iterations=2,
            steps_per_iteration=80, n_envs=4, eval_episodes=2, min_support=2, z=0.5)


def test_run_writes_rows_items_and_tensorboard(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\n")
    code = main(["run", str(cfg), "--set", f"out={tmp_path / 'out'}", "--set", "strategy_options.demos=1",
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.splitlines()[-1])
    for key in ("env", "strategy", "model", "seed", "iterations", "env_steps", "final_mean_return", "reliability",
                "generalization", "locality_kl", "edit_seconds"):
        assert key in summary
    assert summary["env_steps"] == 160 and summary["model"] == "tiny" and summary["strategy"] == "context"
    rows = [json.loads(line) for line in (tmp_path / "out" / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and [r["env_steps"] for r in rows] == [0, 80, 160]
    assert rows[0]["items"] == 0 and rows[0]["locality_kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["locality_kl"] == pytest.approx(0.0, abs=1e-6)  # context edits never touch the model
    assert rows[-1]["locality_prompts"] >= 200
    # portability: the last iteration's policy also played the card's variant, with the same episode count
    assert "portability" not in rows[0] and summary["portability"] == rows[-1]["portability"]
    assert len(summary["portability"]["heavy-long-pole"]["returns"]) == BASE["eval_episodes"]
    items = json.loads((tmp_path / "out" / "items.json").read_text())
    assert len(items["items"]) == rows[-1]["items"]
    assert (summary["reliability"] is None) == (rows[-1]["items"] == 0)
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["strategy_options"] == {"demos": 1}
    # a rerun into the same folder replaces the log instead of appending to it
    assert main(["run", str(cfg), "--set", f"out={tmp_path / 'out'}", "--set", "iterations=1", "--json"]) == 0
    assert len((tmp_path / "out" / "iterations.jsonl").read_text().splitlines()) == 2


def test_a_context_run_takes_its_locality_without_measuring_it(tmp_path, monkeypatch):
    """No context edit changes a parameter, so the model is the untouched one (KL 0 exactly)."""
    from llmrl.loop import run
    from llmrl.metrics import LocalityProbe

    # neither the untouched model's distributions nor the edited one's are taken
    monkeypatch.setattr(LocalityProbe, "_logprobs", lambda self: pytest.fail("ran the probe for context edits"))
    summary = run(LoopConfig(**{**BASE, "steps_per_iteration": 200, "out": tmp_path / "out"}), progress=False)
    assert summary.edit.items > 0 and summary.edit.locality_kl == 0.0 and summary.edit.locality_top1 == 1.0


def test_an_iteration_that_changes_no_item_carries_the_last_evaluation_over(tmp_path, monkeypatch):
    import llmrl.loop as loop
    from llmrl.learner import Learner, Lesson

    real, played = Learner.learn, []
    quiet = {"insert": [], "modify": [], "retain": [], "erase": []}

    def learn(self, card, variant, it, steps):  # iteration 2's feedback changes nothing
        return real(self, card, variant, it, steps) if it != 2 else Lesson([], steps, quiet, False)

    monkeypatch.setattr(Learner, "learn", learn)
    evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: played.append(1) or evaluate(*a, **k))
    summary = loop.run(LoopConfig(**{**BASE, "iterations": 3, "steps_per_iteration": 200, "out": tmp_path / "o"}),
                       progress=False)
    rows = summary.rows
    assert len(played) == 3  # iterations 0, 1 and 3; iteration 2 played nothing
    assert [r["carried"] for r in rows] == [False, False, True, False]
    same = ("eval_returns", "eval_mean_return", "reliability", "generalization", "locality_kl", "items")
    assert all(rows[2][k] == rows[1][k] for k in same)
    assert rows[2]["env_steps"] == 400 and rows[2]["inserted"] == rows[2]["modified"] == 0
    assert rows[2]["decisions_per_s"] is None and rows[2]["phases"]["evaluate"] == 0


def test_overrides_reach_into_mappings():
    values = apply_overrides({"strategy_options": {"k": 1}}, ["strategy_options.demos=2", "seed=3", "env=Taxi-v4"])
    assert values == {"strategy_options": {"k": 1, "demos": 2}, "seed": 3, "env": "Taxi-v4"}
    assert LoopConfig(**values, strategy="weights").seed == 3


def test_exponent_numbers_are_floats_in_overrides_and_files(tmp_path):
    values = apply_overrides({}, ["strategy_options.ft_bound=5e-3", "lr=-1.5E2", "name=e5", "tag=1e"])
    assert values == {"strategy_options": {"ft_bound": 0.005}, "lr": -150.0, "name": "e5", "tag": "1e"}
    (tmp_path / "c.yaml").write_text("strategy_options: {lr: 2e-3, steps: 40}\n")
    assert load_yaml(tmp_path / "c.yaml") == {"strategy_options": {"lr": 0.002, "steps": 40}}


@pytest.mark.parametrize("override,message", [("strategy=telepathy", "strategy"), ("iterations=0", "iterations"),
                                              ("nokey", "key=value"), ("strategy_options.bogus=1", "bogus"),
                                              ("env=Nope-v0", "no card")])
def test_bad_run_configs(tmp_path, capsys, override, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in BASE.items()) + "\n")
    code = main(["run", str(cfg), "--set", override, "--set", f"out={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_shipped_experiment_configs_are_valid(path):
    values = load_yaml(path)
    if {"envs", "stream", "capacity"} & set(values):  # a grid for `llmrl ablate`: every run's settings must resolve
        assert len(expand(load_config(path))) >= max(1, len(values.get("envs", [])))
        return
    if "stages" in values:  # a continual stream: every stage's settings must resolve
        stream = StreamConfig(**values)
        assert all(stream.stage_config(stage) for stage in stream.stages)
        return
    cfg = LoopConfig(**values)
    assert get_card(cfg.env)
    strategies = [cfg.strategy] if cfg.strategy_options else ["context", "adapter", "weights"]
    for strategy in strategies:  # options-free configs promise to run with any strategy
        make_injector(strategy, dict(cfg.strategy_options))
    assert cfg.n_step is None or get_card(cfg.env)[0].potential.__func__ is not Card.potential


def test_run_with_potential_n_step_returns_on_a_sparse_task(tmp_path, capsys):
    values = {**BASE, "env": "MountainCar-v0", "n_step": 5, "gamma": 0.99, "steps_per_iteration": 120,
              "iterations": 1, "eval_max_steps": 20, "locality": False}
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in values.items()) + "\n")
    assert main(["run", str(cfg), "--set", f"out={tmp_path / 'out'}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["env"] == "MountainCar-v0" and summary["env_steps"] == 120
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_step"] == 5


def test_exploring_holds_each_sampled_action(tiny):
    """explore_hold: a slot repeats its sampled action for `hold` decisions, and only fresh slots are scored."""
    from llmrl.learner import Exploring
    from llmrl.policy import LLMPolicy
    from llmrl.prompts import card_prompt

    card = get_card("CartPole-v1")[0]
    policy = LLMPolicy(tiny, card_prompt(card), seed=0)
    explorer = Exploring(policy, temperature=1.0, epsilon=1.0, seed=3, hold=3)
    texts = [f"Cart at {i} m." for i in range(4)]
    rounds = [explorer.act(texts[:2], [0, 1]) for _ in range(6)]
    for slot in (0, 1):
        picks = [r[slot] for r in rounds]
        assert picks[0] == picks[1] == picks[2] and picks[3] == picks[4] == picks[5]
    scored: list[int] = []
    real = policy.scores
    policy.scores = lambda ts: (scored.append(len(ts)), real(ts))[1]  # type: ignore[method-assign]
    explorer.act(texts, [0, 1, 2, 3])  # slots 0 and 1 start a new hold, slots 2 and 3 their first
    explorer.act(texts, [0, 1, 2, 3])  # all four held: nothing scored
    assert scored == [4]
    once = Exploring(policy, temperature=1.0, epsilon=1.0, seed=3)
    picks = [once.act(texts[:1], [0])[0] for _ in range(40)]
    assert len(set(picks)) == 2 and any(a != b for a, b in zip(picks, picks[1:]))  # hold 1 resamples every time


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("strategy,options", [
    ("context", {"demos": 1}), ("adapter", {"steps": 3}),
    ("weights", {"steps": 3, "stats_tokens": 256, "stats_prompts": 8})])
def test_eval_run_replays_the_final_edited_policy(tmp_path, capsys, monkeypatch, strategy, options):
    from llmrl.baselines import make_baseline
    from llmrl.evaluate import eval_seed, evaluate
    import llmrl.loop
    from llmrl.learner import injector_settings
    from llmrl.loop import finished_run, restore
    from llmrl.metrics import reliability
    from llmrl.models import load_model

    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path / "cache"))  # the weights' key statistics, fresh
    cfg = tmp_path / "run.yaml"
    values = {**BASE, "strategy": strategy, "iterations": 1, "steps_per_iteration": 120, "z": 0.0,
              "locality": False, "portability": False}  # z 0: the tiny model's feedback gives an item
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in values.items()))
    out = tmp_path / "out"
    args = ["run", str(cfg), "--set", f"out={out}", "--json"] + [f"--set=strategy_options.{k}={v}"
                                                                  for k, v in options.items()]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    last = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()][-1]
    assert summary["items"] > 0
    assert main(["eval", "--run", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["returns"] == last["eval_returns"] and again["policy"] == strategy and again["model"] == "tiny"
    assert main(["eval", "--run", str(out), "--variant", "heavy-long-pole", "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["env"] == "CartPole-v1:heavy-long-pole"
    run, items = finished_run(out)
    assert json.loads((out / "runtime.json").read_text())["threads"] == torch.get_num_threads()
    settings = json.loads((out / "injector.json").read_text())
    assert settings == {"strategy": strategy, "options": injector_settings(strategy, options)}
    passed, real = [], llmrl.loop.make_injector
    monkeypatch.setattr(llmrl.loop, "make_injector", lambda s, o, out=None: passed.append(dict(o)) or real(s, o, out))
    policy = restore(out, run, items)
    # the edit is made again with every option the run made it with, defaults included
    assert {k: passed[0][k] for k in settings["options"]} == settings["options"]
    assert reliability(policy, items) == pytest.approx(summary["reliability"], abs=1e-9)
    texts = [t for i in items for t in i.examples]
    if strategy == "weights":  # on a machine without the run's cached statistics, the kept corpus gives them
        assert (out / "weights" / "corpus.safetensors").is_file()
        shutil.rmtree(tmp_path / "cache" / "stats")
        assert torch.equal(restore(out, run, items).scores(texts), policy.scores(texts))
    unedited = make_baseline("zero-shot", get_card(run.env)[0], load_model("tiny", device="cpu", dtype="float32"))
    assert not torch.equal(policy.scores(texts), unedited.scores(texts))
    policy.temperature = 1.0  # as `eval --run --temperature 1` builds it
    sampled = [evaluate(policy, get_card(run.env)[0], strategy, "tiny", 3, seed=eval_seed(run.seed),
                        progress=False)[0].returns for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 3  # the sampler restarts from the evaluation seed


def test_eval_run_errors(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "not a finished editing-loop run: it lacks config.json" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path), "--policy", "few-shot"]) == 2
    assert "drop policy" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path), "--normalization", "token"]) == 2  # the run's own is replayed
    assert "drop normalization" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "iterations": 2}))
    (tmp_path / "items.json").write_text('{"items": [], "erased": []}')
    (tmp_path / "iterations.jsonl").write_text('{"iteration": 0}\n{"iteration": 1}\n')
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "stopped after 2 of its 3 evaluations" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "iterations": 1, "model": str(tmp_path / "no-model")}))
    assert main(["eval", "--run", str(tmp_path), "--episodes", "0"]) == 2  # before the (missing) model loads
    err = capsys.readouterr().err
    assert "episodes" in err and "no-model" not in err
