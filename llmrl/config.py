"""Validated configuration: YAML files and command-line overrides become pydantic models.

Every config rejects unknown keys, so a typo is an error rather than a
silently ignored setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmrl.errors import UsageError
from llmrl.strategies import EDIT_STRATEGIES

C = TypeVar("C", bound=BaseModel)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``5e-3`` and ``1E4`` as floats as YAML 1.2 does (1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, with the safe loader (plain data only)."""
    return yaml.load(text, Loader=_Loader)


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
    #: Torch threads; the count changes the order of floating-point sums (and so bf16 results).
    threads: int | None = Field(None, ge=1)
    mode: Literal["score", "generate"] = "score"
    normalization: Literal["word", "token", "sum"] = "word"
    temperature: float = Field(0.0, ge=0.0)
    shots: int = Field(3, ge=1)
    trajectories: Path | None = None
    variant: str | None = None
    #: A finished editing-loop run's folder: evaluate its final policy (the run sets env and model).
    run: Path | None = None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a one-line UsageError saying what is wrong."""
    try:
        data = parse_yaml(Path(path).read_text())
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


def build(cls: type[C], values: dict[str, Any], source: str = "options", overrides: list[str] = ()) -> C:
    """Validate ``values`` into ``cls``; the first problem becomes a one-line UsageError, blamed on the
    ``--set`` flag among ``overrides`` that set the bad key, else on ``source``."""
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        flag = next((o for o in overrides if where == (k := o.partition("=")[0]) or where.startswith(k + ".")
                     or k.startswith(where + ".")), None)
        raise UsageError(f"bad {f'--set {flag}' if flag else source}: {where}: {err['msg']}") from exc


class LoopConfig(Strict):
    """Everything ``llmrl run`` needs: one editing-loop run."""

    env: str
    #: An edit strategy (see llmrl.strategies), or ``none``: collect knowledge, inject nothing.
    strategy: Literal[EDIT_STRATEGIES + ("none",)]  # type: ignore[valid-type]
    #: The prompt baseline the edits start from.
    base_policy: Literal["zero-shot", "expert-hint", "few-shot"] = "zero-shot"
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    iterations: int = Field(4, ge=1)
    steps_per_iteration: int = Field(500, ge=1)
    n_envs: int = Field(8, ge=1)
    #: Exploration while collecting feedback: softmax temperature over the action scores, plus epsilon-random.
    explore_temperature: float = Field(1.0, gt=0.0)
    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    #: Hold each sampled action for this many decisions in its environment: where controls answer slowly
    #: (Pong's paddle), one deviating decision has no effect that returns could show.
    explore_hold: int = Field(1, ge=1)
    gamma: float = Field(0.95, gt=0.0, le=1.0)
    z: float = Field(2.0, ge=0.0)
    min_support: int = Field(20, ge=1)
    min_gap: float = Field(0.0, ge=0.0)
    max_examples: int = Field(16, ge=1)
    preference_margin: float = Field(0.1, ge=0.0, le=1.0)
    #: Estimate action values from all feedback so far (True) or only the latest iteration's.
    pool: bool = True
    erase_z: float = Field(3.0, ge=0.0)
    #: Standard errors that suffice to bring back an action the situation held before (None: erase_z).
    reinstate_z: float | None = Field(None, ge=0.0)
    #: Score actions by n-step returns bootstrapped with the card's potential (sparse-reward
    #: tasks; see Card.potential) instead of Monte-Carlo returns-to-go.
    n_step: int | None = Field(None, ge=1)
    eval_episodes: int = Field(20, ge=1)
    eval_max_steps: int | None = Field(None, ge=1)
    locality: bool = True
    #: After the last iteration, evaluate on each of the card's other variants (portability).
    portability: bool = True
    #: Probe locality on only this many prompts, spread evenly (None: all ~260); for quick runs.
    locality_prompts: int | None = Field(None, ge=1)
    #: Keyword arguments of the strategy's injector (see llmrl/inject/<strategy>.py).
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    out: Path | None = None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML; dots reach into mappings) applied to ``values``."""
    out = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set wants key=value, got {item!r}")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {key}: value {raw!r} is not valid YAML") from exc
        target = out
        *parents, leaf = key.split(".")
        for depth, p in enumerate(parents):
            inner = target.get(p)
            if inner is not None and not isinstance(inner, dict):
                where = ".".join(parents[:depth + 1])
                raise UsageError(f"--set {key}: {where} is {type(inner).__name__} {inner!r}, not a mapping to set "
                                 f"{'.'.join(key.split('.')[depth + 1:])} in")
            target[p] = dict(inner or {})
            target = target[p]
        target[leaf] = value
    return out
