"""Committed runs replay: ``llmrl eval --run`` rebuilds a run's final policy from its folder (the items
injected again by the run's seeded injector, on the run's torch threads, the weights statistics from the
corpus the run kept) and plays the run's own final evaluation, which must give the returns its record
holds, episode by episode.

The replayed runs are the control grid's CartPole runs of seed 3 for the three editing strategies,
executed again with their folders kept (reports/control/replays, see reports/control/NOTES.md): the
grid itself kept only records, which the runs executed again reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmrl.cli import main
from llmrl.record import read_record

CONTROL = Path(__file__).resolve().parent.parent / "reports" / "control"
REPLAYED = ["CartPole-v1__context__s3__default", "CartPole-v1__adapter__s3__default",
            "CartPole-v1__weights__s3__default"]


@pytest.mark.real
@pytest.mark.parametrize("run_id", REPLAYED)
def test_committed_run_replays_to_its_recorded_returns(run_id, capsys):
    record = read_record(CONTROL / "replays" / f"{run_id}.json")
    assert record.ok and record.runtime == {"device": "cpu", "dtype": "bfloat16", "threads": 1}
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--run", str(CONTROL / "replays" / run_id), "--json"]) == 0
        assert torch.get_num_threads() == 1  # the run's own thread count
    finally:
        torch.set_num_threads(threads)
    replay = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert replay["policy"] == record.strategy and replay["episodes"] == len(record.final_returns)
    assert replay["returns"] == record.final_returns


@pytest.mark.parametrize("run_id", REPLAYED)
def test_executed_again_the_grids_runs_play_as_recorded(run_id):
    """Run again from scratch on one thread, each run plays as the grid recorded it: every evaluation,
    the variant, the items and how reliably the edit holds them. Locality differs (the probe has
    included the Atari cards' prompts since the grid ran), and so do the weights run's statistics and
    with them the parameters its edit touches (the grid's came from a corpus cached by an earlier run)."""
    grid, again = (read_record(CONTROL / folder / f"{run_id}.json") for folder in ("runs", "replays"))
    assert again.curve == grid.curve and again.final_returns == grid.final_returns
    assert again.portability == grid.portability
    fields = ("items", "reliability", "generalization") + (() if "weights" in run_id else ("params_touched",))
    for field in fields:
        assert getattr(again.edit, field) == getattr(grid.edit, field), field
