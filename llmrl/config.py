"""Validated configuration: YAML files and command-line overrides become pydantic models.

Every config rejects unknown keys, so a typo is an error rather than a
silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmrl.errors import UsageError

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalConfig(Strict):
    """Everything ``llmrl eval`` needs."""

    env: str
    policy: str = "zero-shot"
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    episodes: int = Field(10, ge=1)
    seed: int = 0
    max_steps: int | None = Field(None, ge=1)
    n_envs: int = Field(8, ge=1)
    mode: Literal["score", "generate"] = "score"
    normalization: Literal["word", "token", "sum"] = "word"
    temperature: float = Field(0.0, ge=0.0)
    shots: int = Field(3, ge=1)
    trajectories: Path | None = None
    variant: str | None = None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a one-line UsageError saying what is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a YAML mapping, not {type(data).__name__}")
    return data


def build(cls: type[C], values: dict[str, Any], source: str = "options") -> C:
    """Validate ``values`` into ``cls``; the first problem becomes a one-line UsageError."""
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise UsageError(f"bad {source}: {where}: {err['msg']}") from exc
