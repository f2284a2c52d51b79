"""A continual stream end to end on the tiny model (llmrl/continual/stream.py, `llmrl continual`)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from llmrl.cli import main
from llmrl.continual.metrics import normalise, stream_metrics
from llmrl.phases import STREAM_PHASES
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


def test_a_stream_end_to_end(tmp_path, capsys, monkeypatch):
    import llmrl.continual.stream as stream_mod

    played, real = [], stream_mod.evaluate
    monkeypatch.setattr(stream_mod, "evaluate", lambda *a, **k: played.append(a[1].key) or real(*a, **k))
    # z 0.1: the tiny model's feedback gives items in some iterations and none in others
    assert main(["continual", str(stream_file(tmp_path, loop={**STREAM["loop"], "z": 0.1})), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    lines = [json.loads(line) for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()]
    # random play and the table on each of the 3 stages, the untouched model on the 2 distinct tasks; then
    # the curve points after an edit (one that edited nothing carries the last point over), and per stage
    # that edited, only the other task (the stage just played its own at its last curve point)
    scored = [not p["carried"] for line in lines[1:] for p in line["curve"][1:]]
    edited = [any(not p["carried"] for p in line["curve"][1:]) for line in lines[1:]]
    assert 0 < sum(scored) < 4, "the stream should both edit and skip: check the tiny model's items"
    assert len(played) == 3 + 3 + 2 + sum(scored) + sum(edited)
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
    # rebuild: the edit in force is every final item at once, so the joint upper bound is the final row
    assert got["joint_returns"] == raw[-1] and got["acc_joint"] == got["acc"]
    out = tmp_path / "out"
    assert [line["stage"] for line in lines] == [0, 1, 2, 3] and [line["row"] for line in lines] == raw
    first = lines[1]
    assert [p["env_steps"] for p in first["curve"]] == [0, 48, 96] and first["curve"][0]["mean_return"] == raw[0][0]
    assert first["steps_to_target"] == next(p["env_steps"] for p in first["curve"] if p["mean_return"] >= 9)
    assert "locality_kl" in first
    for line in lines[1:]:  # one card: its items' share is there exactly when it holds items
        assert set(line["reliability"]) == ({"CartPole-v1"} if line["items"] else set())
        assert all(0 <= v <= 1 for v in line["reliability"].values())
        assert all(i["reliability"] < 0.5 for i in line["items_not_held"])
    assert first["held_at_start"] == 0 and first["revised"] == 0  # nothing was held before the first stage
    for before, line in zip(lines[1:], lines[2:]):
        assert line["held_at_start"] == before["items"]  # one card: the items the last stage ended with
        assert line["revised"] == len(line["steps_to_revise"]) <= line["items_erase"]
        assert all(0 < s <= line["stage_steps"] for s in line["steps_to_revise"])
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    items = json.loads((out / "items.json").read_text())
    assert len(items["items"]) == lines[-1]["items"]
    settings = json.loads((out / "injector.json").read_text())
    assert settings["strategy"] == "context" and settings["options"]["max_tokens"] == 1024  # defaults kept
    # where the time went: each line has the phases since the line before; the joint bound comes after them all
    total = got["phases"]
    assert all(set(line["phases"]) == {*STREAM_PHASES, "acting", "env"} for line in lines)
    assert lines[0]["phases"]["setup"] > 0 and lines[0]["phases"]["references"] > 0
    assert lines[0]["phases"]["collect"] == 0 < lines[0]["phases"]["evaluate"]
    assert all(line["phases"]["collect"] > 0 and line["phases"]["setup"] == 0 for line in lines[1:])
    for name in (*STREAM_PHASES, "acting", "env"):
        assert sum(line["phases"][name] for line in lines) == pytest.approx(total[name] if name != "joint" else 0)
    assert total["joint"] > 0 and sum(total[p] for p in STREAM_PHASES) <= got["wall_seconds"]
    assert 0 < got["efficiency"] < 1


ACROSS = [{"env": "CartPole-v1", "iterations": 2, "steps_per_iteration": 96},
          {"env": "LunarLander-v3", "iterations": 2, "steps_per_iteration": 96}]


OPTIONS = {"weights": {"steps": 2, "stats_tokens": 128, "stats_prompts": 4}, "adapter": {"steps": 2},
           "adapter routed": {"steps": 2, "routed": True}, "context": {}}


@pytest.mark.parametrize(("variant", "accumulate"), [("weights", "rebuild"), ("weights", "sequential"),
                                                     ("adapter", "rebuild"), ("adapter", "sequential"),
                                                     ("adapter routed", "sequential"), ("context", "sequential")])
def test_a_stream_across_cards_edits_one_model_through_a_policy_per_card(tmp_path, capsys, monkeypatch, variant,
                                                                         accumulate):
    import llmrl.continual.stream as stream_mod
    from llmrl.learner import Learner

    rebuilds, real = [], Learner.rebuild
    monkeypatch.setattr(Learner, "rebuild", lambda self: rebuilds.append(self.accumulate) or real(self))
    played, evaluate = [], stream_mod.evaluate
    monkeypatch.setattr(stream_mod, "evaluate", lambda *a, **k: played.append(a[1].key) or evaluate(*a, **k))
    path = stream_file(tmp_path, stages=ACROSS, strategy=variant.split()[0], accumulate=accumulate, target={},
                       strategy_options=OPTIONS[variant], loop={**STREAM["loop"], "z": 0.1})
    assert main(["continual", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["stages"] == ["CartPole-v1", "LunarLander-v3"] and len(got["raw_matrix"]) == 3
    assert got["reference_returns"][1] is not None  # LunarLander's table scores its stage
    items = json.loads((tmp_path / "out" / "items.json").read_text())["items"]
    assert {i["card"] for i in items} == {"CartPole-v1", "LunarLander-v3"}  # each card's knowledge, kept apart
    lines = [json.loads(line) for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()]
    assert lines[2]["items_held"] == len(items) > lines[2]["items"]  # the second card's, and the first's
    # Beyond random play, the table, row 0 and its own stage's curve, CartPole is scored after LunarLander's
    # edits only where they reach its policy (shared parameters), and for the joint row of stacked edits
    own = sum(not p["carried"] for p in lines[1]["curve"][1:])
    lunar_edited = any(not p["carried"] for p in lines[2]["curve"][1:])
    shared = variant.split()[0] in ("weights", "adapter")  # routed adapters too: their layers are attached
    assert played.count("CartPole-v1") - 3 - own == (shared and lunar_edited) + (accumulate == "sequential")
    if accumulate == "rebuild":  # every change was a rebuild: the final row is the joint upper bound
        assert got["joint_returns"] == got["raw_matrix"][-1]
    else:  # the stacked edits are undone and every final item injected at once, once, for the joint row
        assert rebuilds == ["sequential"] and len(got["joint_returns"]) == 2
    joint = normalise([got["joint_returns"]], got["random_returns"], got["reference_returns"])[0]
    assert got["matrix"] is not None and got["acc_joint"] == pytest.approx(sum(joint) / 2)


def test_stream_input_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "cannot use" in one_error_line(capsys, "continual", str(stream_file(tmp_path, out=str(tmp_path / "file"))))
    assert "stage CartPole-v1: its loop block may not set seed" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path, stages=[{**STREAM["stages"][0], "loop": {"seed": 1}}])))
    assert "bad stream stage CartPole-v1: gamma" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path, stages=[{**STREAM["stages"][0], "loop": {"gamma": 3}}])))
    assert "the loop block may not set seed" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "loop.seed=3")
    assert "target names environments that are no stage: Acrobot-v1" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "target.Acrobot-v1=1")
    assert "no variant 'upside-down'" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set",
        "stages=[{env: 'CartPole-v1:upside-down', iterations: 1, steps_per_iteration: 8}]", "--set", "target={}")
    assert "bad --set loop.gamma=2" in one_error_line(
        capsys, "continual", str(stream_file(tmp_path)), "--set", "loop.gamma=2")


def grid_file(tmp_path, **changes):
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump({**STREAM, "out": "ignored", "seed": 7}))
    values = {"stream": "stream.yaml", "strategies": ["context", "ppo"], "accumulate": ["rebuild", "sequential"],
              "seeds": 2, "models": ["tiny"], "device": "cpu", "eval_episodes": 2, "eval_max_steps": 25,
              "out": str(tmp_path / "grid"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_stream_grid_records_resumes_and_reports(tmp_path, capsys):
    path = grid_file(tmp_path)
    assert main(["ablate", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ran"] == 6
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "grid" / "runs").glob("*.json")}
    assert sorted(records) == ([f"stream__context__{a}__s{s}__tiny" for a in ("rebuild", "sequential") for s in (0, 1)]
                               + ["stream__ppo__s0__none", "stream__ppo__s1__none"])  # PPO accumulates no edits
    ppo = records["stream__ppo__s1__none"]
    assert ppo["model"] is None and ppo["stream"]["accumulate"] == "-" and "runtime" not in ppo
    one = records["stream__context__sequential__s1__tiny"]
    assert one["kind"] == "stream" and one["status"] == "ok" and one["config"]["seed"] == 1  # the grid's, not 7
    assert one["stream"]["accumulate"] == "sequential" and one["config"]["eval_episodes"] == 2
    # a record written before an option existed (here: a stage's own loop) still counts; another value does not
    run = tmp_path / "grid" / "runs" / "stream__context__rebuild__s0__tiny.json"
    older = json.loads(run.read_text())
    for stage in older["config"]["stages"]:
        del stage["loop"]
    run.write_text(json.dumps(older))
    other = tmp_path / "grid" / "runs" / "stream__context__rebuild__s1__tiny.json"
    changed = json.loads(other.read_text())
    changed["config"]["reset_feedback"] = False
    other.write_text(json.dumps(changed))
    assert main(["ablate", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["skipped"], summary["ran"]) == (5, 1)

    assert main(["report", str(tmp_path / "grid"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(report["groups"]) == {"context/rebuild", "context/sequential", "ppo/-"}
    rebuild = [r["stream"] for k, r in records.items() if "__rebuild__" in k]
    scores = [r["matrix"] if report["normalised"] else r["raw_matrix"] for r in rebuild]
    # two runs: nothing is trimmed, so the IQM is the mean of the runs' ACC on the report's matrices
    expected = sum(stream_metrics(m).acc for m in scores) / 2
    assert report["groups"]["context/rebuild"]["acc"][0] == pytest.approx(expected)
    mean = report["groups"]["context/rebuild"]["mean_matrix"]
    for i in range(4):
        assert mean[i] == pytest.approx([sum(m[i][j] for m in scores) / 2 for j in range(3)])
    assert [r["joint_returns"] for r in rebuild] == [r["raw_matrix"][-1] for r in rebuild]  # rebuild
    joint = [normalise([r["joint_returns"]], r["random_returns"], r["reference_returns"])[0] if report["normalised"]
             else r["joint_returns"] for r in rebuild]  # on the report's scale, as ACC
    assert report["groups"]["context/rebuild"]["acc_joint"][0] == pytest.approx(sum(sum(j) / 3 for j in joint) / 2)
    assert report["groups"]["ppo/-"]["acc_joint"] is None
    text = (tmp_path / "grid" / "report.md").read_text()
    assert "| joint ACC | env steps |" in text
    budget = sum(s["iterations"] * s["steps_per_iteration"] for s in STREAM["stages"])
    assert f"feedback budget is {budget:,}" in text
    assert report["groups"]["context/rebuild"]["env_steps"] == [r["env_steps"] for r in rebuild]
    mean_steps = sum(r["env_steps"] for r in rebuild) / 2
    assert re.search(rf"^\| context \| rebuild \|.*\| {mean_steps:,.0f} \|$", text, re.M)
    row = next(line for line in text.splitlines() if line.startswith("| context | rebuild |") and "at the end" in line)
    ended = [sum(r["stage_returns"][k] >= 9 for r in rebuild) for k in (0, 2)]  # the stages with a target
    assert [c.split("; ")[1] for c in row.strip("|").split("|")[2:]] == [f"{n}/2 at the end " for n in ended]
    assert "## Forgetting and transfer" in text and "matrix_context_rebuild.png" in text
    assert (tmp_path / "grid" / "matrix_context_sequential.png").exists()
    # where the time goes, from the phases every record carries
    timing = text.split("## Where a stream's time goes")[1]
    rows = dict(re.findall(r"^\| ([a-z]+ \([a-z-]+\)) \| (\d+) \|", timing, re.M))
    assert rows == {"context (rebuild)": "2", "context (sequential)": "2", "ppo (-)": "2"}
    ppo_train = sum(r["phases"]["train"] for k, r in records.items() if "ppo" in k) / 2
    assert re.search(rf"^\| ppo \(-\) \|.*\| {ppo_train:,.1f} \|", timing, re.M)  # PPO's training seconds
    assert (tmp_path / "grid" / "phases.png").exists()


def test_a_stream_row_never_pools_two_precisions(tmp_path, capsys):
    """A seed resumed in another precision gets a row of its own; PPO, which has no language model, is not
    labelled."""
    path = grid_file(tmp_path, accumulate=["rebuild"], seeds=[0], dtype="float32")
    assert main(["ablate", str(path)]) == 0
    assert main(["ablate", str(path), "--set", "seeds=[1]", "--set", "strategies=[context]",
                 "--set", "dtype=bfloat16"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "grid"), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out.splitlines()[-1])["groups"]
    assert set(groups) == {"context (float32)/rebuild", "context (bfloat16)/rebuild", "ppo/-"}
    assert all(group["runs"] == 1 for group in groups.values())
    text = (tmp_path / "grid" / "report.md").read_text()
    assert "The language model ran in bfloat16 and float32; each strategy's rows are split by precision." in text
    # one run: the plain mean, starred (escaped in markdown)
    assert re.search(r"^\| context \(bfloat16\) \| rebuild \| 1\\\* \|", text, re.M)
    assert (tmp_path / "grid" / "matrix_context_bfloat16_rebuild.png").exists()


def test_stream_grid_errors(tmp_path, capsys):
    assert "a stream grid runs edit strategies and ppo; random" in one_error_line(
        capsys, "ablate", str(grid_file(tmp_path, strategies=["random", "context"])), "--dry-run")
    assert "give one of envs" in one_error_line(
        capsys, "ablate", str(grid_file(tmp_path, envs=["CartPole-v1"])), "--dry-run")
    inline = grid_file(tmp_path, stream={"stages": STREAM["stages"], "seed": 3})
    assert "the stream block may not set seed" in one_error_line(capsys, "ablate", str(inline), "--dry-run")
    assert "a stream grid does not use env_loop, ppo" in one_error_line(
        capsys, "ablate", str(grid_file(tmp_path, env_loop={"CartPole-v1": {"gamma": 0.9}}, ppo={"steps": 1000})),
        "--dry-run")


def test_a_stream_grid_loop_overrides_the_streams_loop(tmp_path):
    from llmrl.ablate import expand, load_config

    specs = expand(load_config(grid_file(tmp_path, loop={"z": 1.5, "reinstate_z": 1.0})))
    loop = specs[0].config["loop"]
    assert (loop["z"], loop["reinstate_z"], loop["min_support"]) == (1.5, 1.0, 2)  # the stream's other keys kept


def test_ppo_is_trained_on_through_the_stream(tmp_path, capsys):
    assert main(["continual", str(stream_file(tmp_path, strategy="ppo")), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["model"] == "ppo" and got["runtime"] is None and len(got["raw_matrix"]) == 4
    assert got["items_inserted"] == got["items_erased"] == 0
    assert got["joint_returns"] is None and got["acc_joint"] is None  # no items to inject
    lines = [json.loads(line) for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()]
    steps = [line["ppo_steps"] for line in lines[1:]]
    # one model trained on: its step counter runs on across stages (whole rollouts of 8 envs x 32 steps)
    assert steps == sorted(steps) and steps[0] > 0 and len(set(steps)) == 3
    assert got["env_steps"] == steps[-1]
    # PPO's training is one phase: it collects and updates at once
    assert all(line["phases"]["train"] > 0 == line["phases"]["collect"] for line in lines[1:])


def test_ppo_across_cards_trains_a_fresh_learner_per_card(tmp_path, capsys):
    stages = [{"env": "CartPole-v1", "iterations": 2, "steps_per_iteration": 96},
              {"env": "MountainCar-v0", "iterations": 1, "steps_per_iteration": 96},
              {"env": "CartPole-v1", "iterations": 1, "steps_per_iteration": 96}]
    assert main(["continual", str(stream_file(tmp_path, stages=stages, strategy="ppo", target={})), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    lines = [json.loads(line) for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()][1:]
    assert lines[1]["ppo_steps"] == lines[1]["stage_steps"] > 0  # MountainCar's learner starts from zero
    # CartPole's own learner trains on when CartPole returns
    assert lines[2]["ppo_steps"] == lines[0]["stage_steps"] + lines[2]["stage_steps"] > lines[0]["ppo_steps"]
    assert got["env_steps"] == sum(line["stage_steps"] for line in lines)
    raw = got["raw_matrix"]
    assert raw[2][0] == raw[1][0]  # training MountainCar's learner leaves CartPole's as it was


def test_steps_to_revise_count_the_held_items_a_stage_contradicts(tmp_path):
    from llmrl.cards import get_card
    from llmrl.config import LoopConfig
    from llmrl.continual.agents import EditingAgent
    from llmrl.knowledge import KnowledgeItem
    from llmrl.learner import Lesson

    card, _ = get_card("CartPole-v1")
    cfg = LoopConfig(env="CartPole-v1", strategy="none", model="tiny", device="cpu", dtype="float32",
                     locality=False)
    agent = EditingAgent([cfg], [card], None, "rebuild", tmp_path)
    kb = agent.tasks[card.key][1]
    held = {s: KnowledgeItem(s, "left", 1.0, 20) for s in card.situations[:3]}
    kb.items.update(held)
    agent.begin(card, None, reset_feedback=True)
    quiet = {"insert": [], "modify": [], "retain": [], "erase": []}
    flips = [quiet, {**quiet, "erase": [held[card.situations[0]]]},
             {**quiet, "erase": [held[card.situations[1]], KnowledgeItem("new", "right", 1.0, 20)]}]
    agent.learner.learn = lambda *args: Lesson([], 50, flips.pop(0), False)  # three iterations of 50 steps
    for it in range(3):
        agent.learn(card, None, it + 1, 50)
    info = agent.stage_info()
    assert (info["held_at_start"], info["revised"], info["steps_to_revise"]) == (3, 2, [100, 150])
    assert info["items_erase"] == 3  # every erase counts; only held ones are revisions


def test_a_stage_line_names_the_items_their_policy_does_not_choose(tmp_path):
    from llmrl.cards import get_card
    from llmrl.config import LoopConfig
    from llmrl.continual.agents import EditingAgent
    from llmrl.knowledge import KnowledgeItem

    card, _ = get_card("CartPole-v1")
    cfg = LoopConfig(env="CartPole-v1", strategy="none", model="tiny", device="cpu", dtype="float32",
                     locality=False)
    agent = EditingAgent([cfg], [card], None, "rebuild", tmp_path)
    agent.begin(card, None, reset_feedback=True)
    policy, kb = agent.tasks[card.key]
    texts = [f"the pole leans {w}" for w in ("left", "right", "back", "forward")]
    chosen = [policy.action_words[k] for k in policy.scores(texts).argmax(-1).tolist()]
    other = next(w for w in policy.action_words if w != chosen[1])
    kb.items = {"a": KnowledgeItem("a", chosen[0], 1.0, 20, examples=texts[:1]),
                "b": KnowledgeItem("b", other, 1.0, 20, examples=texts[1:2]),  # the model chooses otherwise
                "c": KnowledgeItem("c", chosen[2], 1.0, 20, examples=texts[2:])}  # held on at least half
    info = agent.stage_info()
    assert info["reliability"] == {card.key: (1 + 0 + 1 + (chosen[3] == chosen[2])) / 4}
    assert info["items_not_held"] == [{"card": card.key, "situation": "b", "action": other, "reliability": 0.0}]


def test_a_stage_with_a_target_no_run_reached_keeps_its_column():
    from llmrl.report.streams import _targets

    runs = [{"steps_to_target": [500, None, None], "stage_returns": [500.0, 9.0, 12.0]}]
    table = _targets({("weights", "sequential"): runs}, ["CartPole-v1", "CartPole-v1:mirrored", "CartPole-v1"],
                     [475, 475, None])[-1]
    assert table.header[2:] == ["1: CartPole-v1", "2: CartPole-v1:mirrored"]  # stage 3 has no target
    assert table.rows[0][2:] == ["500 (1/1); 1/1 at the end", "not reached (0/1); 0/1 at the end"]
