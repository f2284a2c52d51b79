"""A stream stopped after a stage goes on from its checkpoint as if it had not stopped
(llmrl/continual/checkpoint.py, `llmrl continual --resume`, `llmrl ablate`)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from llmrl.cli import main
from llmrl.continual import checkpoint as ckpt
from llmrl.continual.agents import EditingAgent
from llmrl.continual.stream import StreamConfig, run_stream
from tests.test_continual import ACROSS, OPTIONS, STREAM, grid_file

pytestmark = pytest.mark.usefixtures("one_thread")

#: What a stage line or summary holds that depends on the process (seconds), not on the stream.
TIMES = {"phases", "wall_seconds", "efficiency", "runtime", "out", "resumed_after"}


class Stopped(BaseException):
    """The fault: the process ends right after a stage's checkpoint was written (a kill, not an error)."""


def stop_after(monkeypatch, stage: int) -> None:
    real = ckpt.save

    def save(out, config, checkpoint):
        real(out, config, checkpoint)
        if checkpoint.stage == stage:
            raise Stopped

    monkeypatch.setattr(ckpt, "save", save)


def behaviour(agent) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's parameters, and each card's policy's scores of its items' examples (held and erased)."""
    params = torch.cat([p.detach().flatten().float() for p in agent.lm.model.parameters()])
    scores = {}
    for key, (policy, kb) in agent.tasks.items():
        texts = sorted({t for item in [*kb.items.values(), *kb.erased] for t in item.examples})
        if texts:
            scores[key] = policy.scores(texts, cached=False)
    return params, scores


def watch(monkeypatch) -> dict[str, list]:
    """Record the agent's behaviour at every checkpoint (``saved``) and just after a restore (``restored``)."""
    seen: dict[str, list] = {"saved": [], "restored": []}
    state, restore = EditingAgent.state, EditingAgent.restore

    def watched_state(self):
        seen["saved"].append(behaviour(self))
        return state(self)

    def watched_restore(self, saved):
        restore(self, saved)
        seen["restored"].append(behaviour(self))

    monkeypatch.setattr(EditingAgent, "state", watched_state)
    monkeypatch.setattr(EditingAgent, "restore", watched_restore)
    return seen


def stream_values(tmp_path, name: str, **changes) -> dict:
    return {**STREAM, "loop": {**STREAM["loop"], "z": 0.1}, "out": str(tmp_path / name), **changes}


def lines(folder) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "phases"}
            for line in (folder / "stages.jsonl").read_text().splitlines()]


def without_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMES}


#: The 3-stage stream with the feedback that gives the tiny model items by the end of its first stage.
LONGER = [{**s, "steps_per_iteration": 96} for s in STREAM["stages"][:2]] + STREAM["stages"][2:]


@pytest.mark.parametrize(("strategy", "accumulate", "stages", "options"), [
    ("context", "rebuild", LONGER, {"rules": False, "k": 2}),  # retrieval: the prompts alone
    ("weights", "rebuild", ACROSS, OPTIONS["weights"]),  # a joint edit of two cards' items
    ("adapter", "sequential", ACROSS, OPTIONS["adapter"]),  # an adapter trained on, edit after edit
])
def test_a_stream_resumed_after_a_stage_ends_as_the_whole_run(tmp_path, capsys, monkeypatch, strategy, accumulate,
                                                              stages, options):
    common = {"strategy": strategy, "accumulate": accumulate, "stages": stages, "strategy_options": options,
              "target": {}}
    seen = watch(monkeypatch)
    whole = run_stream(StreamConfig(**stream_values(tmp_path, "whole", **common)), progress=False)
    assert not (tmp_path / "whole" / ckpt.NAME).exists()  # a finished stream keeps no checkpoint
    assert whole.resumed_after == []

    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(stream_values(tmp_path, "parts", **common)))
    with monkeypatch.context() as m:
        stop_after(m, 1)
        with pytest.raises(Stopped):
            run_stream(StreamConfig(**stream_values(tmp_path, "parts", **common)), progress=False)
    assert [line["stage"] for line in lines(tmp_path / "parts")] == [0, 1]
    assert lines(tmp_path / "parts")[1]["items"] > 0  # knowledge and edits to put back: the test means something
    assert main(["continual", str(path), "--json", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert resumed["resumed_after"] == [1]
    # the restored model and prompts are the ones the whole run had after stage 1 (its second checkpoint)
    (params, scores), (params_after, scores_after) = seen["saved"][1], seen["restored"][0]
    assert torch.equal(params, params_after) and scores.keys() == scores_after.keys() and scores
    assert all(torch.equal(scores[k], scores_after[k]) for k in scores)
    assert without_times(resumed) == without_times(whole.to_json())
    assert lines(tmp_path / "parts") == lines(tmp_path / "whole")
    for name in ("items.json", "config.json", "injector.json"):
        parts, whole_file = (json.loads((tmp_path / f / name).read_text()) for f in ("parts", "whole"))
        assert {**parts, "out": None} == {**whole_file, "out": None}
    # the phases of both processes add up: every stage line's, and the setup of each process
    phases = [json.loads(line)["phases"] for line in (tmp_path / "parts" / "stages.jsonl").read_text().splitlines()]
    assert sum(p["collect"] for p in phases) == pytest.approx(resumed["phases"]["collect"])
    assert phases[2]["setup"] > 0 and resumed["wall_seconds"] >= sum(resumed["phases"].values()) - \
        resumed["phases"]["acting"] - resumed["phases"]["env"]


def test_a_checkpoint_of_another_stream_or_precision_starts_afresh(tmp_path, capsys, monkeypatch):
    values = stream_values(tmp_path, "out")
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(values))
    with monkeypatch.context() as m:
        stop_after(m, 1)
        with pytest.raises(Stopped):
            run_stream(StreamConfig(**values), progress=False)
    # another configuration: the checkpoint is not this stream's
    path.write_text(yaml.safe_dump({**values, "eval_episodes": 2}))
    with monkeypatch.context() as m:
        stop_after(m, 1)
        with pytest.raises(Stopped):
            assert main(["continual", str(path), "--resume"])
    assert json.loads((tmp_path / "out" / ckpt.NAME).read_text())["config"]["eval_episodes"] == 2
    assert [line["stage"] for line in lines(tmp_path / "out")] == [0, 1]
    # the same configuration, but the checkpoint ran in another precision: one stream of two would mix them
    saved = json.loads((tmp_path / "out" / ckpt.NAME).read_text())
    (tmp_path / "out" / ckpt.NAME).write_text(json.dumps({**saved, "runtime": {"device": "cpu", "dtype": "bfloat16"}}))
    assert main(["continual", str(path), "--json", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "starts again from its first stage" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["resumed_after"] == []
    # without --resume a stream always starts afresh
    with monkeypatch.context() as m:
        stop_after(m, 2)
        with pytest.raises(Stopped):
            run_stream(StreamConfig(**{**values, "eval_episodes": 2}), progress=False)
    assert main(["continual", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["resumed_after"] == []


def test_a_grid_goes_on_with_the_stream_a_fault_stopped(tmp_path, capsys, monkeypatch):
    path = grid_file(tmp_path, strategies=["context"], accumulate=["rebuild"], seeds=[0])
    with monkeypatch.context() as m:
        stop_after(m, 2)
        with pytest.raises(Stopped):  # the driver itself stops: no record is written
            main(["ablate", str(path), "--json"])
    run = tmp_path / "grid" / "runs" / "stream__context__rebuild__s0__tiny"
    assert (run / ckpt.NAME).exists() and not run.with_suffix(".json").exists()
    assert main(["ablate", str(path), "--dry-run"]) == 0
    assert "todo    stream__context__rebuild__s0__tiny  (goes on after stage 2)" in capsys.readouterr().out
    assert main(["ablate", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ran"] == 1
    record = json.loads(run.with_suffix(".json").read_text())
    assert record["status"] == "ok" and record["stream"]["resumed_after"] == [2]
    assert [line["stage"] for line in lines(run)] == [0, 1, 2, 3] and not (run / ckpt.NAME).exists()
