"""Sharing the cores between llmrl processes: live claims count, ended ones do not, and the split."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmrl import cores

HOLD = "from llmrl import cores; cores.claim(); print('held', flush=True); input()"


@pytest.fixture
def claims(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRL_CORES_DIR", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "_held", None)
    return tmp_path


def _holder(env_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "LLMRL_CORES_DIR": str(env_dir)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_computing_process_counts_until_it_ends(claims):
    assert cores.claim() == 0
    assert cores.claim() == 0  # claiming again registers nothing new
    other = _holder(claims)
    try:
        assert cores.claim() == 1
    finally:
        other.communicate("\n")
    assert cores.claim() == 0
    assert sorted(p.name for p in claims.iterdir()) == [str(os.getpid())]  # the ended claim is gone


def test_a_killed_process_leaves_no_live_claim(claims):
    other = _holder(claims)
    other.kill()
    other.wait()
    assert cores.claim() == 0


def test_a_driver_only_looks(claims, monkeypatch):
    monkeypatch.setattr(cores, "cores", lambda: 4)
    other = _holder(claims)
    try:
        assert cores.share(workers=2, register=False) == 1
        assert [p.name for p in claims.iterdir()] == [str(other.pid)]  # the driver left no claim of its own
    finally:
        other.communicate("\n")


def test_share_splits_the_cores_among_the_processes(claims, monkeypatch):
    monkeypatch.setattr(cores, "cores", lambda: 8)
    assert cores.share() == 8
    assert cores.share(workers=3) == 2
    other = _holder(claims)
    try:
        assert cores.share() == 4
        assert cores.share(workers=8) == 1  # never below one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cores.share() == 3  # the user's count stands
    finally:
        other.communicate("\n")


def test_an_unusable_folder_shares_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LLMRL_CORES_DIR", str(blocker / "claims"))
    monkeypatch.setattr(cores, "_held", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cores.claim() == 0
    assert cores.share() == cores.cores()


def test_the_cli_takes_its_share_unless_told(claims, monkeypatch):
    import torch

    from llmrl.cli import _set_threads

    monkeypatch.setattr(cores, "cores", lambda: 2)
    before = torch.get_num_threads()
    other = _holder(claims)
    try:
        _set_threads(None)
        assert torch.get_num_threads() == 1
        _set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        other.communicate("\n")
        torch.set_num_threads(before)
