"""Experiment grids: expansion, records, resumption, failure isolation, SIGKILL, local workers and Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import llmrl.ablate as ablate_mod
import llmrl.models
from llmrl.ablate import AblateConfig, ablate, expand, load_config
from llmrl.cli import main
from llmrl.cards import get_card
from llmrl.errors import UsageError
from llmrl.record import read_record, record_path, write_record
from llmrl.resume import status
from tests.helpers import one_error_line

TINY_LOOP = {"iterations": 1, "steps_per_iteration": 48, "n_envs": 4, "min_support": 2, "z": 0.5, "locality": False}


def grid(tmp_path: Path, **changes) -> Path:
    values = {"envs": ["CartPole-v1"], "strategies": ["random", "zero-shot", "context"], "seeds": 2,
              "models": ["tiny"], "device": "cpu", "eval_episodes": 2, "eval_max_steps": 20, "loop": TINY_LOOP,
              "out": str(tmp_path / "out"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def test_expand_lists_the_grid_with_resolved_configs(tmp_path):
    cfg = load_config(grid(tmp_path, strategies=["random", "zero-shot", "context", "ppo"], seeds=[3, 5]))
    specs = expand(cfg)
    assert [s.run_id for s in specs] == [
        "CartPole-v1__random__s3__none", "CartPole-v1__random__s5__none",
        "CartPole-v1__zero-shot__s3__tiny", "CartPole-v1__zero-shot__s5__tiny",
        "CartPole-v1__context__s3__tiny", "CartPole-v1__context__s5__tiny",
        "CartPole-v1__ppo__s3__none", "CartPole-v1__ppo__s5__none"]
    context, ppo = specs[4].config, specs[6].config
    assert context["steps_per_iteration"] == 48 and context["strategy"] == "context" and context["seed"] == 3
    assert ppo["total_steps"] == 48 and ppo["eval_every"] == 48 and ppo["model"] is None  # the loop's budget


def test_ppo_learners_budgets_and_reference_scores(tmp_path):
    # Plain PPO at the loop's budget keeps exactly the keys it always had, so finished grids still resume.
    plain = expand(load_config(grid(tmp_path, strategies=["ppo"], seeds=1)))[0].config
    assert set(plain) == {"env", "strategy", "seed", "model", "device", "dtype", "eval_episodes", "eval_max_steps",
                          "portability", "total_steps", "eval_every", "n_envs"}
    longer = expand(load_config(grid(tmp_path, strategies=["ppo"], seeds=1, ppo={"steps": 1000})))[0].config
    assert (longer["total_steps"], longer["eval_also_at"]) == (1000, 48)  # also scored at the editing budget
    with pytest.raises(UsageError, match="ppo-pixels needs the 'pixels' observation"):
        expand(load_config(grid(tmp_path, strategies=["ppo-pixels"])))
    scored = load_config(grid(tmp_path, reference_scores={"CartPole-v1": {"random": 22, "human": 500}}))
    assert scored.reference_scores["CartPole-v1"].human == 500
    for refs, message in [({"CartPole-v2": {"random": 0, "human": 1}}, "no card"),
                          ({"CartPole-v1": {"random": 1, "human": 1}}, "equal")]:
        with pytest.raises(UsageError, match=message):
            expand(load_config(grid(tmp_path, reference_scores=refs)))


def write_raw(results: Path, data: dict) -> None:
    """A record file as an earlier llmrl (or a hand) wrote it."""
    path = record_path(results, data["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_records_from_before_a_new_loop_option_still_count(tmp_path):
    """A loop option added later, at its default, does not invalidate finished runs; set otherwise, it does."""
    cfg = load_config(grid(tmp_path, strategies=["context"], seeds=1))
    spec = expand(cfg)[0]
    old = {k: v for k, v in spec.config.items() if k != "explore_hold"}  # a record written before the option
    write_raw(cfg.out, {"run_id": spec.run_id, "config": old, "status": "ok"})
    assert status(cfg.out, spec) == "ok"
    held = expand(load_config(grid(tmp_path, strategies=["context"], seeds=1, loop={**TINY_LOOP, "explore_hold": 4})))
    assert status(cfg.out, held[0]) == "todo"
    write_raw(cfg.out, {"run_id": spec.run_id, "config": {**old, "gone": 1}, "status": "ok"})
    assert status(cfg.out, spec) == "todo"  # a key the current config lacks is a different run


def test_a_new_card_version_redoes_the_runs_recorded_with_the_old_one(tmp_path, monkeypatch):
    """The run config cannot see a change in a card's code; the card's version can."""
    cfg = load_config(grid(tmp_path, strategies=["random"], seeds=1))
    spec = expand(cfg)[0]
    assert spec.card_version == 1
    record = ablate_mod.execute(spec, str(cfg.out))
    assert record.card_version == 1
    write_record(cfg.out, record)
    assert status(cfg.out, spec) == "ok"
    write_raw(cfg.out, {k: v for k, v in record.dump().items() if k != "card_version"})
    assert status(cfg.out, spec) == "ok"  # written before card versions: version 1
    assert read_record(record_path(cfg.out, spec.run_id)).card_version == 1
    card, _ = get_card("CartPole-v1")
    monkeypatch.setattr(type(card), "version", 2)
    bumped = expand(cfg)[0]
    assert bumped.card_version == 2 and status(cfg.out, bumped) == "todo"


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_named_per_run_on_a_cpu(tmp_path, monkeypatch, native):
    """On a CPU the precision depends on the CPU alone, so the run config (and so resuming) names it."""
    monkeypatch.setattr(llmrl.models, "native_bf16", lambda: native)
    specs = expand(load_config(grid(tmp_path, strategies=["random", "context"], seeds=1)))
    assert {s.config["dtype"] for s in specs} == {"bfloat16" if native else "float32"}
    fixed = expand(load_config(grid(tmp_path, strategies=["context"], seeds=1, dtype="float32")))
    assert fixed[0].config["dtype"] == "float32"


def test_auto_dtype_refuses_to_redo_the_runs_another_cpu_finished(tmp_path, monkeypatch, capsys):
    """Resumed on a CPU without native bf16, a grid whose runs ran in bf16 would run them all again over
    their records; it stops with the two ways on, and a dtype named on the command line is obeyed."""
    monkeypatch.setattr(llmrl.models, "native_bf16", lambda: True)
    path = grid(tmp_path, strategies=["context"], seeds=1)
    spec = expand(load_config(path))[0]
    write_raw(load_config(path).out, {"run_id": spec.run_id, "config": spec.config, "status": "ok"})
    assert status(load_config(path).out, spec) == "ok"
    monkeypatch.setattr(llmrl.models, "native_bf16", lambda: False)
    cfg = load_config(path)
    before = record_path(cfg.out, spec.run_id).read_text()
    with pytest.raises(UsageError, match=r"ran in bfloat16.*--set dtype=bfloat16 .*--set dtype=float32 to redo"):
        ablate(cfg)
    err = one_error_line(capsys, "ablate", str(path), "--dry-run")
    assert spec.run_id in err
    assert record_path(cfg.out, spec.run_id).read_text() == before
    assert status(cfg.out, expand(load_config(path, ["dtype=bfloat16"]))[0]) == "ok"
    assert status(cfg.out, expand(load_config(path, ["dtype=float32"]))[0]) == "todo"


def test_env_loop_overrides_and_bad_grids(tmp_path):
    cfg = load_config(grid(tmp_path, envs=["CartPole-v1", "MountainCar-v0"], strategies=["weights"], seeds=1,
                           env_loop={"MountainCar-v0": {"n_step": 5}}))
    assert [s.config["n_step"] for s in expand(cfg)] == [None, 5]
    for changes, message in [({"envs": ["Nope-v0"]}, "no card"), ({"loop": {"seed": 3}}, "may not set seed"),
                             ({"seeds": [1, 1]}, "duplicate"), ({"strategies": ["telepathy"]}, "strategies"),
                             ({"loop": {"gamma": 7}}, "gamma")]:
        with pytest.raises(UsageError, match=message):
            expand(load_config(grid(tmp_path, **changes)))


def test_runs_record_everything_and_a_rerun_skips_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the default: a lone driver's one worker takes every core
    path = grid(tmp_path)
    assert main(["ablate", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary == {"runs": 6, "skipped": 0, "ran": 6, "failed": 0, "out": str(tmp_path / "out")}
    got = records(tmp_path / "out")
    assert len(got) == 6 and {r["status"] for r in got.values()} == {"ok"}
    context = got["CartPole-v1__context__s0__tiny"]
    assert context["kind"] == "edit" and context["model"] == "tiny" and context["env_steps"] == 48
    assert [p["env_steps"] for p in context["curve"]] == [0, 48] and len(context["final_returns"]) == 2
    assert set(context["edit"]) >= {"reliability", "generalization", "locality_kl", "edit_seconds"}
    assert (tmp_path / "out" / "runs" / "CartPole-v1__context__s0__tiny" / "iterations.jsonl").exists()
    zero = got["CartPole-v1__zero-shot__s1__tiny"]
    assert zero["curve"][0]["env_steps"] == 0 and zero["final_mean_return"] == zero["curve"][0]["mean_return"]
    assert zero["config"]["seed"] == 1 and {"python", "torch", "transformers", "gymnasium"} <= set(zero["versions"])
    assert got["CartPole-v1__random__s0__none"]["model"] is None
    # dtype auto, named when the grid is expanded: the record says the precision the run played in, and on
    # how many threads (one worker: all the cores)
    assert zero["runtime"] == {"device": "cpu", "dtype": zero["config"]["dtype"], "threads": os.cpu_count()}
    assert context["runtime"] == zero["runtime"]
    for run in got.values():  # every strategy also played CartPole's one variant
        assert set(run["portability"]) == {"heavy-long-pole"} and len(run["portability"]["heavy-long-pole"]["returns"]) == 2

    assert main(["ablate", str(path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["ran"] == 0 and again["skipped"] == 6
    # a changed setting makes the affected runs unfinished again
    assert main(["ablate", str(path), "--set", "eval_episodes=3", "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.splitlines()[-1])["runs"]
    assert {r["status"] for r in listed} == {"todo"}
    # and the report reads the records
    assert main(["report", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "CartPole-v1" in printed and "context" in printed and (tmp_path / "out" / "report.html").exists()


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    cfg = load_config(grid(tmp_path))
    real = ablate_mod._RUNNERS["prompt"]

    def flaky(spec, folder):
        if spec.seed == 1:
            raise RuntimeError("the model caught fire")
        return real(spec, folder)

    monkeypatch.setitem(ablate_mod._RUNNERS, "prompt", flaky)
    summary = ablate(cfg)
    assert summary["failed"] == 1 and summary["ran"] == 6
    failed = records(cfg.out)["CartPole-v1__zero-shot__s1__tiny"]
    assert failed["status"] == "failed" and "the model caught fire" in failed["error"] and "Traceback" in failed["error"]
    monkeypatch.setitem(ablate_mod._RUNNERS, "prompt", real)
    assert ablate(cfg) == {"runs": 6, "skipped": 5, "ran": 1, "failed": 0, "out": str(cfg.out)}
    assert all(status(cfg.out, s) == "ok" for s in expand(cfg))


def test_sigkill_loses_only_runs_in_flight_and_resume_finishes(tmp_path):
    path = grid(tmp_path, strategies=["zero-shot"], seeds=6, eval_episodes=4, eval_max_steps=40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llmrl", "ablate", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while len(list((out / "runs").glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(out)
    assert 2 <= len(before) < 6, "the experiment was not killed mid-way"
    assert all(r["status"] == "ok" for r in before.values())  # every record on disk is whole
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["skipped"] == len(before) and summary["ran"] == 6 - len(before) and summary["failed"] == 0
    after = records(out)
    assert len(after) == 6 and all(after[k] == v for k, v in before.items())  # finished runs left alone
    assert not list((out / "runs").glob(".*.tmp"))


def test_local_worker_processes(tmp_path):
    cfg = load_config(grid(tmp_path, strategies=["random"], seeds=3))
    assert ablate(cfg, workers=2)["failed"] == 0
    assert sorted(records(cfg.out)) == [f"CartPole-v1__random__s{i}__none" for i in range(3)]


def test_ray_backend_runs_a_grid_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    cfg = load_config(grid(tmp_path, strategies=["random", "zero-shot"], seeds=2, ray_cpus=1))
    summary = ablate(cfg, backend="ray")
    assert summary == {"runs": 4, "skipped": 0, "ran": 4, "failed": 0, "out": str(cfg.out)}
    got = records(cfg.out)
    assert {r["status"] for r in got.values()} == {"ok"}
    assert got["CartPole-v1__zero-shot__s1__tiny"]["config"]["seed"] == 1
    # the same records as a local run of the same grid (same seeds, same evaluator)
    local = AblateConfig(**{**cfg.model_dump(), "out": tmp_path / "local"})
    ablate(local)
    for run_id, record in records(tmp_path / "local").items():
        assert record["final_returns"] == got[run_id]["final_returns"]


def test_ray_runtime_env_from_the_config_reaches_ray_init(tmp_path, monkeypatch):
    """The config's ray_runtime_env (e.g. pip: [the llmrl wheel]) is what ray.init gets, with llmrl's own env var."""
    import types

    seen: dict = {}
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False
    fake.init = lambda **kwargs: seen.update(kwargs)
    fake.shutdown = lambda: None
    fake.remote = lambda **_: (lambda fn: types.SimpleNamespace(remote=lambda *args: fn(*args)))
    fake.wait = lambda pending, num_returns: (pending[:num_returns], pending[num_returns:])
    fake.get = lambda ref: ref
    monkeypatch.setitem(sys.modules, "ray", fake)
    wheel = "/shared/dist/llmrl-0.1.0-py3-none-any.whl"
    cfg = load_config(grid(tmp_path, strategies=["random"], seeds=1,
                           ray_runtime_env={"pip": [wheel], "env_vars": {"MARK": "1"}}))
    assert ablate(cfg, backend="ray")["failed"] == 0
    assert seen["runtime_env"] == {"pip": [wheel], "env_vars": {"TRANSFORMERS_VERBOSITY": "error", "MARK": "1"}}


def test_one_driver_per_results_folder_and_a_dead_drivers_lock_is_gone(tmp_path, capsys):
    """A second driver on a folder in use is refused with the holder's PID; once the holder dies (here:
    SIGKILL), the kernel has released its lock and the next driver runs."""
    cfg = load_config(grid(tmp_path, strategies=["random"], seeds=1))
    cfg.out.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(cfg.out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.pwrite(fd, str(os.getpid()).encode(), 0)\n"
        "print('held', flush=True)\ntime.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["ablate", str(grid(tmp_path, strategies=["random"], seeds=1))]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another llmrl ablate (PID {holder.pid})" in err and "Traceback" not in err
        assert not (cfg.out / "runs").exists()  # nothing ran beside the holder
    finally:
        holder.kill()
        holder.wait()
    assert ablate(cfg)["ran"] == 1
