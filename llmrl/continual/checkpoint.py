"""Where a stream stands after a stage: enough to go on from there in another process.

A stream of the control cards takes about an hour on a CPU with native bf16
and some three hours on one without; a session, a machine or a fault can end
it first. After each stage (row 0 included) the stream writes
``checkpoint.json``: the return matrix so far, its references, the counters,
the seconds per phase, every card's knowledge (items held and erased) and the
edits in force, each with its items, oldest first. Going on loads the model
afresh, puts the knowledge back and makes those edits again in their order:
every injector's edit is a function of the model it edits and its items (an
undo restores the state before exactly), so this is the model the stage left.
The next stage's feedback is estimated afresh either way (``reset_feedback``),
and its rollout, exploration and evaluation seeds follow from the stream's
seed and the iteration, so the rest of the stream plays as it would have.

A checkpoint is used only for the same configuration on the same device and
dtype (another precision would make one stream of two); otherwise the stream
starts again from its first stage. PPO streams always start again: SB3 saves
its learners with pickle, which llmrl does not load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmrl.folders import atomic_write

NAME = "checkpoint.json"
VERSION = 1


@dataclass
class Checkpoint:
    """The stream after stage ``stage`` (0: the untouched model scored, no stage played)."""

    stage: int
    #: Iterations played so far over all stages: the next one's seeds follow from it.
    iteration: int
    env_steps: int
    raw: list[list[float]]
    random_returns: list[float]
    reference_returns: list[float | None]
    steps_to_target: list[int | None]
    totals: dict[str, int]
    #: PhaseClock snapshot and wall seconds so far, over every process that ran the stream.
    phases: dict[str, float]
    wall_seconds: float
    #: The device and dtype the model ran in: going on needs the same.
    runtime: dict[str, Any]
    #: EditingAgent.state(): per card the items held and erased, the edits in force and the items replayed.
    agent: dict[str, Any]
    #: The stages after which earlier processes stopped and this stream went on.
    resumed_after: list[int] = field(default_factory=list)


def save(out: Path, config: dict[str, Any], checkpoint: Checkpoint) -> None:
    atomic_write(out / NAME, json.dumps({"version": VERSION, "config": config, **asdict(checkpoint)}))


def load(out: Path, config: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in ``out`` if it was written for ``config`` (and its stage lines are all there), else None."""
    try:
        data = json.loads((out / NAME).read_text())
        lines = (out / "stages.jsonl").read_text().splitlines()
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.pop("version", None) != VERSION or data.pop("config", None) != config:
        return None
    try:
        checkpoint = Checkpoint(**data)
    except TypeError:
        return None
    return checkpoint if len(lines) > checkpoint.stage else None


def stopped_after(path: Path) -> int | None:
    """The last finished stage a stream's checkpoint file names, for listing (not checked against a config)."""
    try:
        stage = json.loads(path.read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, int) else None


def truncate_lines(out: Path, stage: int) -> None:
    """Keep the stage lines up to ``stage``: a line written after the checkpoint belongs to the stage replayed."""
    path = out / "stages.jsonl"
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["stage"] <= stage]
    atomic_write(path, "".join(line + "\n" for line in kept))
