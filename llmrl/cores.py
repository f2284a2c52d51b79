"""How many torch threads an llmrl process takes: its share of the cores among the llmrl processes computing.

Why: torch's OpenMP threads spin while they wait for work. Two processes that each run one thread per core on
the same cores preempt each other's spinning threads (each fell to 16 % of its solo decisions/s on the 2-core
CPU; two with one thread each kept 93 %: docs/experiments.md, "Sharing the cores"). A process alone would lose
by taking one thread (the adapter trained 1.64 times faster on two), so the count depends on who else computes.

Every computing llmrl process holds an advisory lock on a file of its own in one folder per user. The kernel
drops the lock when the process ends, however it ends, so a crash leaves no live claim. A process counts the
held locks once, when it starts computing, and keeps its thread count for its life: the count changes the order
of floating-point sums in training, and a run records the count it used (``runtime.json``) so that a replay
uses it too. So a process started alone keeps every core when a second one starts later; the second takes what
is left.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: no registry, and every process takes every core
    fcntl = None  # type: ignore[assignment]

_held: tuple[int, IO] | None = None  # (pid, locked claim file) of this process


def folder() -> Path:
    """Where the claims live: ``LLMRL_CORES_DIR``, else one folder per user in the temporary directory."""
    override = os.environ.get("LLMRL_CORES_DIR")
    return Path(override) if override else Path(tempfile.gettempdir()) / f"llmrl-cores-{os.getuid()}"


def cores() -> int:
    """The cores this process may run on: its affinity mask, which a container or ``taskset`` narrows."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def claim(register: bool = True) -> int:
    """Register this process as computing (once per process; ``register=False``: only look) and return how many
    other llmrl processes are.

    An unusable claims folder counts nobody: sharing is a courtesy, and no run fails for want of it.
    """
    global _held
    if fcntl is None:
        return 0
    where = folder()
    try:
        where.mkdir(parents=True, exist_ok=True)
        if register and (_held is None or _held[0] != os.getpid()):  # a forked child claims for itself
            _held = (os.getpid(), _locked(where / str(os.getpid())))
        return sum(_live(path) for path in where.iterdir() if path.name != str(os.getpid()))
    except OSError:
        return 0


def share(workers: int = 1, register: bool = True) -> int:
    """Torch threads for each of ``workers`` processes about to compute here: an even split of the cores among
    them and the llmrl processes already computing, at least one. ``OMP_NUM_THREADS``, when set, stands.
    ``register=False`` is for a grid driver, whose workers register themselves."""
    others = claim(register)
    chosen = os.environ.get("OMP_NUM_THREADS", "")
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    return max(1, cores() // (others + workers))


def _locked(path: Path) -> IO:
    """Open and lock ``path``, making sure the locked file is still the one the folder names (another
    process may remove a claim file it found unlocked between our open and our lock)."""
    while True:
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process's staleness check holds it for a moment at most
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _live(path: Path) -> int:
    """1 if a process holds ``path``'s lock; an unheld claim (its process ended) is removed."""
    try:
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 1
            path.unlink(missing_ok=True)
            return 0
    except OSError:
        return 0
