"""A grid never loses finished work to a fault, one folder has one writer, no worker outlives its driver (issue 18).

CI runs as root, and root ignores mode bits; the tests of read-only folders run
llmrl in a process that first drops the capabilities that let root write
anyway (CAP_DAC_OVERRIDE and friends), so they test what a user sees.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from llmrl.ablate import expand, load_config
from llmrl.cli import main
from llmrl.folders import MAX_NAME
from llmrl.resume import status
from tests.helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

LOOP = {"iterations": 1, "steps_per_iteration": 32, "n_envs": 4, "min_support": 2, "z": 0.5, "locality": False}

#: Run first in a fresh interpreter: keep uid 0 but lose the capabilities that let root ignore mode bits.
DROP_ROOT_OVERRIDES = textwrap.dedent("""
    import ctypes, sys
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    data[0].effective &= keep
    data[0].permitted &= keep
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    from llmrl.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def grid_file(tmp_path: Path, **changes) -> Path:
    values = {"envs": ["CartPole-v1"], "strategies": ["context"], "seeds": 3, "models": ["tiny"], "device": "cpu",
              "eval_episodes": 2, "eval_max_steps": 10, "loop": LOOP, "out": str(tmp_path / "out"), **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").iterdir() if p.is_dir() and not p.name.endswith(".json"))


# -- 1. records that cannot be written -----------------------------------------------------------------------


@pytest.mark.parametrize("read_only", ["out", "out/runs"])
def test_a_read_only_results_folder_fails_before_any_run(tmp_path, read_only):
    path = grid_file(tmp_path, strategies=["random"])
    assert main(["ablate", str(path)]) == 0  # a finished grid: the folder and its files exist
    (tmp_path / "out" / "runs" / "CartPole-v1__random__s2__none.json").unlink()  # one run to redo
    folder = tmp_path / read_only
    folder.chmod(0o555)
    try:
        done = subprocess.run([sys.executable, "-c", DROP_ROOT_OVERRIDES, "ablate", str(path)],
                              capture_output=True, text=True, timeout=120)
        report = subprocess.run([sys.executable, "-c", DROP_ROOT_OVERRIDES, "report", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2 and done.stderr.startswith("llmrl: error: cannot write"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "[1/1]" not in done.stdout  # refused before the run, not after it
    if read_only == "out":  # the report goes beside the records
        assert report.returncode == 2 and report.stderr.count("\n") == 1, report.stderr
        assert report.stderr.startswith("llmrl: error: cannot write the report into")
    else:
        assert report.returncode == 0, report.stderr


def test_an_out_that_is_a_file_runs_through_one_or_is_too_long(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below", tmp_path / ("x" * 300)):
        err = one_error_line(capsys, "ablate", str(grid_file(tmp_path, out=str(out))))
        assert f"cannot use {out} as a folder to write to" in err


def test_a_record_that_cannot_be_written_stops_the_grid_at_once(tmp_path, capsys):
    """Records written before the failure are kept; the runs after it never start (one worker)."""
    path = grid_file(tmp_path)
    ids = [s.run_id for s in expand(load_config(path))]
    (tmp_path / "out" / "runs" / f"{ids[1]}.json").mkdir(parents=True)  # the file system refuses this record
    err = one_error_line(capsys, "ablate", str(path))
    assert f"cannot write {tmp_path / 'out' / 'runs' / ids[1]}.json" in err and "keeping the 1 records" in err
    assert status(tmp_path / "out", expand(load_config(path))[0]) == "ok"
    assert run_folders(tmp_path / "out") == ids[:2]  # the third run never started
    assert not list((tmp_path / "out" / "runs").glob(".*.tmp"))


def test_with_workers_queued_runs_are_cancelled_and_workers_stopped(tmp_path, capsys):
    path = grid_file(tmp_path, seeds=8)
    for spec in expand(load_config(path)):
        (tmp_path / "out" / "runs" / f"{spec.run_id}.json").mkdir(parents=True)
    err = one_error_line(capsys, "ablate", str(path), "--workers", "2")
    assert "stopped the experiment, keeping the 0 records" in err
    # two runs in flight and one handed to the pool's queue at most; before, all eight ran first
    assert len(run_folders(tmp_path / "out")) <= 3
    assert multiprocessing.active_children() == []  # the workers were stopped, not left running


def test_a_run_id_too_long_for_the_file_system_is_shortened_the_same_way_every_time(tmp_path, tiny, capsys):
    model = tmp_path / ("m" * 120) / ("n" * 120)
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    path = grid_file(tmp_path, strategies=["zero-shot"], seeds=1, models=[str(model)])
    assert main(["ablate", str(path), "--dry-run", "--json"]) == 0
    [planned] = json.loads(capsys.readouterr().out.splitlines()[-1])["runs"]
    assert planned["status"] == "todo" and len(planned["run_id"].encode()) <= MAX_NAME
    assert planned["run_id"].startswith("CartPole-v1__zero-shot__s0__")
    assert main(["ablate", str(path)]) == 0
    record = json.loads((tmp_path / "out" / "runs" / f"{planned['run_id']}.json").read_text())
    assert record["status"] == "ok" and record["model"] == str(model)
    assert main(["ablate", str(path), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["runs"] == [{**planned, "status": "ok"}]


# -- 2. one writer per folder ------------------------------------------------------------------------------


def hold_lock(folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, time\n"
        f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.pwrite(fd, str(os.getpid()).encode(), 0)\n"
        "print('held', flush=True)\ntime.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_folder_has_one_writer(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"env": "CartPole-v1", "strategy": "context", "model": "tiny", "device": "cpu",
                                      "eval_episodes": 1, "eval_max_steps": 5, "out": str(tmp_path / "run"),
                                      **LOOP}))
    holder = hold_lock(tmp_path / "run")
    try:
        err = one_error_line(capsys, "run", str(config))
        assert f"is in use by another llmrl run (PID {holder.pid})" in err
        assert not (tmp_path / "run" / "iterations.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", str(config), "--json"]) == 0


def test_a_redone_run_starts_from_an_empty_folder(tmp_path, capsys):
    """A run killed mid-way leaves its folder; redoing it must not mix the old log or scalars with the new."""
    path = grid_file(tmp_path, seeds=1)
    [spec] = expand(load_config(path))
    left = tmp_path / "out" / "runs" / spec.run_id
    (left / "tensorboard").mkdir(parents=True)
    (left / "tensorboard" / "events.out.tfevents.killed").write_bytes(b"stale")
    (left / "iterations.jsonl").write_text('{"iteration": 0}\n{"iteration": 1}\n{"iteration": 2}\n')
    assert main(["ablate", str(path)]) == 0
    assert [json.loads(line)["iteration"] for line in (left / "iterations.jsonl").read_text().splitlines()] == [0, 1]
    assert not (left / "tensorboard" / "events.out.tfevents.killed").exists()
    capsys.readouterr()
    assert main(["eval", "--run", str(left), "--episodes", "1", "--max-steps", "3"]) == 0


# -- 3. workers die with their driver ----------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent PID) of a live process; None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[1] == pid:
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_killed_with_the_driver_while_they_start_do_not_survive(tmp_path):
    path = grid_file(tmp_path, strategies=["random"], seeds=4)
    driver = subprocess.Popen([sys.executable, "-m", "llmrl", "ablate", str(path), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: dict[int, str] = {}
    deadline = time.time() + 120
    while len(workers) < 2 and time.time() < deadline and driver.poll() is None:
        workers = {p: c for p, c in _children(driver.pid).items() if "spawn_main" in c}
        time.sleep(0.002)
    spawned = _children(driver.pid)  # the workers and multiprocessing's resource tracker
    os.kill(driver.pid, signal.SIGKILL)  # while the workers are still starting up (importing llmrl, torch)
    driver.wait()
    try:
        assert len(workers) == 2, "the driver never started its workers"
        deadline = time.time() + 60
        while any(_stat(p) for p in spawned) and time.time() < deadline:
            time.sleep(0.1)
        survivors = {p: c for p, c in spawned.items() if _stat(p)}
        assert not survivors, f"outlived the driver: {survivors}"
    finally:
        for pid in spawned:
            if _stat(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_killed_from_outside_stops_the_grid_with_one_line(tmp_path):
    path = grid_file(tmp_path, seeds=6)
    driver = subprocess.Popen([sys.executable, "-m", "llmrl", "ablate", str(path), "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 120
    while not (runs.exists() and run_folders(tmp_path / "out")) and time.time() < deadline:
        time.sleep(0.01)  # until a worker is inside a run
    workers = [p for p, c in _children(driver.pid).items() if "spawn_main" in c]
    assert workers, "no worker is running"
    os.kill(workers[0], signal.SIGKILL)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 2 and err.startswith("llmrl: error: a worker process died"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(_stat(p) for p in workers)  # the other worker was stopped too
    assert len(list(runs.glob("*.json"))) < 6
