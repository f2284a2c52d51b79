"""A capacity experiment as a grid that ``llmrl ablate`` runs, resumes and records like any other.

An experiment config with a ``capacity`` block (instead of ``envs`` or
``stream``) runs methods x item counts x modes x models x seeds, each cell
one :func:`~llmrl.capacity.bench.run_capacity`; its record (kind
``capacity``) carries the benchmark's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llmrl.config import Strict, build
from llmrl.errors import UsageError
from llmrl.folders import short_name
from llmrl.strategies import METHODS

if TYPE_CHECKING:
    from llmrl.ablate import AblateConfig, RunSpec

#: Experiment keys for runs of the editing loop, which a capacity grid has none of.
UNUSED = ("strategies", "accumulate", "loop", "env_loop", "strategy_options", "ppo", "reference_scores",
          "portability", "eval_episodes", "eval_max_steps")


class CapacityGrid(Strict):
    """The ``capacity`` block of an experiment."""

    methods: list[str] = Field(min_length=1)
    items: list[int] = Field(min_length=1)
    modes: list[Literal["batch", "sequential"]] = Field(default_factory=lambda: ["batch"])
    #: A saved item pool (JSON, relative to the working folder); None: the 1,000-key pool, rebuilt per run.
    pool: Path | None = None
    episodes: int = Field(0, ge=0)
    max_steps: int = Field(500, ge=1)


def expand_capacity(cfg: AblateConfig) -> list[RunSpec]:
    """Methods x modes x item counts x models x seeds, in that order (the fast cells of a method first)."""
    from llmrl.ablate import RunSpec
    from llmrl.models import run_dtype

    grid = build(CapacityGrid, cfg.capacity, source="the experiment's capacity block")
    unknown = [m for m in grid.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown methods {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if min(grid.items) < 1:
        raise UsageError("capacity items must be at least 1")
    unused = sorted(set(cfg.model_fields_set) & set(UNUSED))
    if unused:
        raise UsageError(f"a capacity grid does not use {', '.join(unused)}: its cells are benchmarks of "
                         "editing methods, not runs of the editing loop")
    if grid.pool is not None and not grid.pool.is_file():
        raise UsageError(f"the item pool {grid.pool} does not exist")
    specs = []
    for method in grid.methods:
        for mode in grid.modes:
            for n in sorted(grid.items):
                for model in cfg.models:
                    for seed in cfg.seed_list():
                        config = {"method": method, "n": n, "sequential": mode == "sequential", "seed": seed,
                                  "model": model, "device": cfg.device, "dtype": run_dtype(cfg.dtype, cfg.device),
                                  "pool": None if grid.pool is None else str(grid.pool),
                                  "episodes": grid.episodes, "max_steps": grid.max_steps}
                        label = (model or "default").replace("/", "-")
                        name = f"edits__{method}__{mode}__n{n}__s{seed}__{label}"
                        specs.append(RunSpec(short_name(name), "-", method, seed, model, config, capacity=True))
    return specs


def run_capacity_spec(spec: RunSpec, folder: Path) -> dict[str, Any]:
    """One cell: the benchmark's result as the record's ``capacity``."""
    from llmrl.capacity.bench import run_capacity

    c = dict(spec.config)
    pool = c.pop("pool")
    result = run_capacity(**c, pool=None if pool is None else Path(pool))
    return {"model": result.model, "runtime": result.runtime, "capacity": result.to_json()}
