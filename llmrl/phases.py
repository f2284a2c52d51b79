"""Where a run's wall time goes: seconds per phase, and the share spent on work no run can avoid.

A run of the editing loop does two kinds of work. Acting, the policy choosing
actions and the environment stepping, is the experiment itself. Everything
else (turning feedback into knowledge, injecting it, scoring the edit, probing
locality, loading the model) is overhead a faster tool can cut. A
:class:`PhaseClock` is handed down to the code that does each: the loop opens
a phase around each part of an iteration, and the rollouts inside a phase add
the seconds of their ``act`` calls and environment steps. The run's
**efficiency** is acting plus stepping over its wall time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

#: The phases of an editing-loop run, in the order an iteration runs them.
PHASES = ("setup", "collect", "knowledge", "inject", "locality", "evaluate", "edit_metrics", "portability")
#: A continual stream's: ``references`` scores random play and the reference table on every stage, ``train``
#: is PPO's training (collecting and updating at once), ``joint`` makes and scores the joint upper bound.
STREAM_PHASES = ("setup", "references", "collect", "knowledge", "inject", "train", "locality", "evaluate", "joint")


class PhaseClock:
    """Seconds per phase, and the acting and environment seconds measured inside them.

    ``acting`` is the time in the policy's ``act`` calls during rollouts (its forward passes and
    decision-cache lookups); ``env`` the time in the environments' ``reset`` and ``step``. Both are
    counted inside whichever phase runs the rollout (collect, evaluate, portability).
    """

    def __init__(self, phases: tuple[str, ...] = PHASES) -> None:
        self.seconds = dict.fromkeys(phases, 0.0)
        self.acting = 0.0
        self.env = 0.0
        self._open: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the body's seconds to ``name``. Phases do not nest: each second belongs to one phase."""
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(self.seconds)}")
        if self._open is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._open!r}")
        self._open, t0 = name, time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self._open = None

    def snapshot(self) -> dict[str, float]:
        """Every phase's seconds so far, with ``acting`` and ``env`` beside them."""
        return {**self.seconds, "acting": self.acting, "env": self.env}

    def restore(self, snapshot: dict[str, float]) -> None:
        """Go on from a snapshot taken in another process (a stream resumed from its checkpoint)."""
        self.acting, self.env = snapshot["acting"], snapshot["env"]
        self.seconds.update({k: v for k, v in snapshot.items() if k in self.seconds})

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """The seconds between two snapshots, per key."""
        return {k: after[k] - before[k] for k in after}


def efficiency(times: dict[str, float], wall_seconds: float) -> float | None:
    """Acting plus environment seconds over the wall time (None for no wall time)."""
    return (times["acting"] + times["env"]) / wall_seconds if wall_seconds > 0 else None


def describe(times: dict[str, float], wall_seconds: float) -> str:
    """One line: the wall time, the efficiency and every phase that ran, as the CLI prints them."""
    share = efficiency(times, wall_seconds)
    parts = [f"{name} {seconds:.1f}s" for name, seconds in times.items()
             if name not in ("acting", "env") and seconds > 0]
    head = f"wall {wall_seconds:.1f}s" + (f", efficiency {share:.0%}" if share is not None else "")
    return f"{head} (acting {times['acting']:.1f}s, env {times['env']:.1f}s): {', '.join(parts)}"
