"""The run record: what one finished (or failed) grid run leaves behind, as one JSON file.

The grid runner (:mod:`llmrl.ablate`) writes it and the report
(:mod:`llmrl.report`) reads it; both go through :class:`RunRecord`, so the
two cannot disagree on a key. Records written before a field existed still
load: every field added since the first grid has a default that means what
those records meant (``card_version`` 1, no ``runtime``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmrl.errors import UsageError
from llmrl.folders import atomic_write


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CurvePoint(_Record):
    """The evaluation after ``env_steps`` environment steps of feedback or training."""

    env_steps: int
    mean_return: float
    returns: list[float]


class EditMetrics(_Record):
    """The last edit of an editing-loop run, measured after its final iteration (see :mod:`llmrl.metrics`)."""

    reliability: float | None
    generalization: float | None
    locality_kl: float | None
    locality_top1: float | None
    edit_seconds: float
    params_touched: int
    items: int


class VariantReturn(_Record):
    """The final policy's returns on one of the card's variants (portability), or why it could not play it."""

    mean_return: float | None = None
    returns: list[float] | None = None
    skipped: str | None = None


class RunRecord(_Record):
    """One grid run; ``status`` ``failed`` records carry ``error`` and no outcome."""

    run_id: str
    env: str
    strategy: str
    seed: int
    model: str | None
    kind: Literal["random", "prompt", "edit", "ppo", "stream", "capacity"]
    #: The run's resolved settings (an editing run's LoopConfig, a PPO run's budget and evaluation).
    config: dict[str, Any]
    card_version: int = 1
    versions: dict[str, str]
    started: str
    host: str
    edit: EditMetrics | None = None
    error: str | None = None
    #: Device, dtype and torch threads the model ran with; None for runs without a model.
    runtime: dict[str, str | int] | None = None
    env_steps: int | None = None
    curve: list[CurvePoint] = Field(default_factory=list)
    final_mean_return: float | None = None
    final_returns: list[float] | None = None
    #: PPO: the resolved RL Zoo hyper-parameters it trained with.
    hyperparameters: dict[str, Any] | None = None
    portability: dict[str, VariantReturn] | None = None
    #: A continual stream's summary (llmrl.continual.stream.StreamSummary.to_json): matrices and metrics.
    stream: dict[str, Any] | None = None
    #: A capacity benchmark cell's result (llmrl.capacity.bench.CapacityResult.to_json).
    capacity: dict[str, Any] | None = None
    #: Seconds per phase of the run, with ``acting`` and ``env`` (llmrl.phases); None for runs from before.
    phases: dict[str, float] | None = None
    status: Literal["ok", "failed"]
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def dump(self) -> dict[str, Any]:
        """JSON-ready, without the optional keys a run of this kind never has (as records always were)."""
        data = self.model_dump(mode="json")
        for key in ("runtime", "hyperparameters", "stream", "capacity", "phases"):
            if data[key] is None:
                del data[key]
        for name, variant in (data["portability"] or {}).items():
            data["portability"][name] = {k: v for k, v in variant.items() if v is not None}
        return data


def record_path(results: Path, run_id: str) -> Path:
    return results / "runs" / f"{run_id}.json"


def write_json(path: Path, data: Any) -> Path:
    """Atomically: a reader sees the whole file or none of it."""
    return atomic_write(path, json.dumps(data, indent=1))


def write_record(results: Path, record: RunRecord) -> Path:
    """Atomically: a reader (or a resumed experiment) sees the whole record or none of it."""
    return write_json(record_path(results, record.run_id), record.dump())


def read_record(path: Path) -> RunRecord:
    """A record from its file; a clear error for one that is unreadable or not a run record."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable JSON run record ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a run record must be a JSON object")
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise UsageError(f"{path}: missing or malformed field in run record ({where}: {err['msg']})") from None
