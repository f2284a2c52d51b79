"""Committed runs replay: ``llmrl eval --run`` rebuilds a run's final policy from its folder (the items
injected again by the run's seeded injector, on the run's torch threads, the weights statistics from the
corpus the run kept) and plays the run's own final evaluation, which must give the returns its record
holds, episode by episode.

The replayed runs are the control grid's CartPole runs of seed 3 for the three editing strategies,
executed again with their folders kept, once in bf16 on a CPU with bf16 in hardware (reports/control/replays)
and once in float32 on one without (reports/control/replays-float32); see reports/control/NOTES.md.
Each set is replayed on its own kind of CPU: floating-point sums, and with them what an adapter learns,
follow the instructions a CPU has, and emulated bf16 is too slow to replay in the suite (not one of the
three finished in 12 minutes on a CPU without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmrl.cli import main
from llmrl.models import native_bf16
from llmrl.record import read_record

CONTROL = Path(__file__).resolve().parent.parent / "reports" / "control"
REPLAYED = ["CartPole-v1__context__s3__default", "CartPole-v1__adapter__s3__default",
            "CartPole-v1__weights__s3__default"]
FOLDERS = {"bfloat16": CONTROL / "replays", "float32": CONTROL / "replays-float32"}
NATIVE = "bfloat16" if native_bf16() else "float32"


@pytest.mark.real
@pytest.mark.parametrize("run_id", REPLAYED)
@pytest.mark.parametrize("dtype", list(FOLDERS))
def test_committed_run_replays_to_its_recorded_returns(dtype, run_id, capsys):
    if dtype != NATIVE:
        pytest.skip(f"the {dtype} runs were recorded on a CPU {'with' if dtype == 'bfloat16' else 'without'} "
                    "bf16 in hardware; this one replays the other set")
    record = read_record(FOLDERS[dtype] / f"{run_id}.json")
    assert record.ok and record.runtime == {"device": "cpu", "dtype": dtype, "threads": 1}
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--run", str(FOLDERS[dtype] / run_id), "--json"]) == 0
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


@pytest.mark.parametrize("run_id", REPLAYED)
def test_in_float32_the_runs_play_as_in_bf16(run_id):
    """The float32 runs, on a CPU without bf16 in hardware, play as the bf16 ones: every evaluation, the
    variant, the items and how reliably the edit holds them (the weights run's touched parameters differ)."""
    bf16, fp32 = (read_record(FOLDERS[dtype] / f"{run_id}.json") for dtype in ("bfloat16", "float32"))
    assert (bf16.runtime["dtype"], fp32.runtime["dtype"]) == ("bfloat16", "float32")
    assert fp32.curve == bf16.curve and fp32.final_returns == bf16.final_returns
    assert fp32.portability == bf16.portability
    for field in ("items", "reliability", "generalization"):
        assert getattr(fp32.edit, field) == getattr(bf16.edit, field), field


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_replay_on_a_cpu_that_emulates_bf16_says_so_before_it_starts(monkeypatch, capsys, native):
    import llmrl.loop
    import llmrl.models
    from llmrl.errors import UsageError

    def stop(*args, **kwargs):
        raise UsageError("stopped before the policy is built")

    monkeypatch.setattr(llmrl.models, "native_bf16", lambda: native)
    monkeypatch.setattr(llmrl.loop, "restore", stop)
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--run", str(FOLDERS["bfloat16"] / REPLAYED[0]), "--json"]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert ("which this CPU emulates" in err) is not native and "stopped before the policy is built" in err
