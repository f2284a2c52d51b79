"""Experiments: a grid of runs (environments x strategies x seeds x models), resumable, local or on Ray.

An experiment YAML (:class:`AblateConfig`) expands to runs; each run is one
(environment, strategy, seed, model) and produces one record, a JSON file in
``OUT/runs/``. A record is written atomically (temporary file, fsync, rename)
by the driver once the run returns, so killing the experiment at any moment
loses at most the runs in flight; running the same command again skips every
run whose record says ``ok`` and redoes the rest (a stream goes on after its
last finished stage, :mod:`llmrl.continual.checkpoint`). A run that raises is
recorded as ``failed`` with its traceback, and the grid goes on.

Every strategy is measured on the same evaluation seeds by the same
evaluator, and at the same environment-step budget: the editing loop's
``iterations x steps_per_iteration`` is also PPO's training budget (unless
``ppo.steps`` asks for more, when PPO is evaluated at that budget too),
evaluated every ``steps_per_iteration`` steps. ``ppo`` reads the environment's
own observation (OCAtari's object vector on Atari), ``ppo-pixels`` the card's
``pixels`` observation.

Runs execute in this process, in worker processes (``--workers N``) or as
Ray tasks (``--backend ray``), see :mod:`llmrl.backends`; all call
:func:`execute`, and only this driver writes to the results folder, which it
locks against a second driver (:mod:`llmrl.folders`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import Field, model_validator

from llmrl.config import LoopConfig, Strict, apply_overrides, build, load_yaml
from llmrl.continual.checkpoint import NAME as CHECKPOINT
from llmrl.cores import claim, share
from llmrl.errors import UsageError
from llmrl.folders import exclusive, short_name, writable
from llmrl.record import RunRecord, record_path, write_json, write_record
from llmrl.resume import refuse_auto_redo, status
from llmrl.strategies import ACCUMULATE, BY_NAME, NAMES

if TYPE_CHECKING:
    from llmrl.cards import Card
    from llmrl.policy import Policy

#: Packages whose versions every record carries.
VERSIONED = ("llmrl", "torch", "transformers", "peft", "gymnasium", "stable-baselines3", "minigrid", "numpy")
#: LoopConfig keys the experiment sets per run; a ``loop`` block may not set them.
PER_RUN = {"env", "strategy", "seed", "model", "device", "dtype", "eval_episodes", "eval_max_steps", "portability",
           "strategy_options", "out"}


class PPOSettings(Strict):
    #: Training steps; None means the editing loop's budget (iterations x steps_per_iteration).
    steps: int | None = Field(None, ge=1)
    #: Evaluate every this many steps; None means every steps_per_iteration.
    eval_every: int | None = Field(None, ge=1)


class ReferenceScores(Strict):
    """An environment's reference scores; the report gives (x - random) / (human - random)."""

    random: float
    human: float

    @model_validator(mode="after")
    def _apart(self) -> ReferenceScores:
        if self.human == self.random:
            raise ValueError(f"human and random scores are equal ({self.random}); nothing to normalise by")
        return self


class AblateConfig(Strict):
    """One experiment: the grid and the settings every run shares."""

    #: The environments of a grid of separate runs; or, instead, ``stream``.
    envs: list[str] = Field(default_factory=list)
    #: A continual stream (StreamConfig's keys but strategy, accumulate, seed, model and the evaluation
    #: settings, which the grid sets): its runs are strategies x accumulate x models x seeds.
    stream: dict[str, Any] | None = None
    #: Or a capacity benchmark grid (llmrl.capacity.grid.CapacityGrid): methods x item counts x modes.
    capacity: dict[str, Any] | None = None
    #: With ``stream``: how each strategy accumulates its edits (see llmrl.learner.Learner).
    accumulate: list[Literal[ACCUMULATE]] = Field(default_factory=lambda: ["rebuild"])  # type: ignore[valid-type]
    strategies: list[Literal[NAMES]] = Field(default_factory=list)  # type: ignore[valid-type]
    #: Seeds: a count (0..n-1) or an explicit list.
    seeds: Annotated[int, Field(ge=1)] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = 5
    #: Model ids (None: the default model); random and PPO runs use none.
    models: list[str | None] = Field(default_factory=lambda: [None])
    device: str = "auto"
    #: ``auto`` is resolved when the grid is expanded, where runs go to the CPU (it depends on the CPU
    #: alone, see llmrl.models.resolve_dtype), so records name the precision they ran in; on a GPU each
    #: run resolves it from its model's size.
    dtype: str = "auto"
    eval_episodes: int = Field(20, ge=1)
    eval_max_steps: int | None = Field(None, ge=1)
    #: Also evaluate every run's final policy on the card's other variants (DESIGN's portability).
    portability: bool = True
    #: LoopConfig keys shared by the editing runs (iterations, steps_per_iteration, gamma, ...); with ``stream``,
    #: they override the stream's own ``loop`` block.
    loop: dict[str, Any] = Field(default_factory=dict)
    #: Per environment, overrides of ``loop`` (e.g. n_step for sparse-reward tasks).
    env_loop: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Per editing strategy, its injector's options.
    strategy_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    #: Per environment, scores the report normalises by (Atari: random and human scores from the literature).
    reference_scores: dict[str, ReferenceScores] = Field(default_factory=dict)
    #: Worker threads per run for torch (None: the machine's cores divided among the workers).
    threads: int | None = Field(None, ge=1)
    #: Ray resources per run.
    ray_cpus: float = Field(1.0, gt=0)
    ray_gpus: float = Field(0.0, ge=0)
    #: Ray's runtime environment for the runs, e.g. ``{pip: [/shared/dist/llmrl-0.1.0-py3-none-any.whl]}``
    #: to install llmrl on nodes that lack it (docs/experiments.md, "Running on Ray").
    ray_runtime_env: dict[str, Any] = Field(default_factory=dict)
    out: Path = Path("results/experiment")

    @model_validator(mode="after")
    def _one_kind(self) -> AblateConfig:
        if bool(self.envs) + (self.stream is not None) + (self.capacity is not None) != 1:
            raise ValueError("give one of envs (a grid of runs), stream (a continual stream) or capacity (a "
                             "capacity benchmark grid)")
        if self.capacity is None and not self.strategies:
            raise ValueError("strategies: give at least one")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as plain data (it crosses process and Ray boundaries)."""

    run_id: str
    env: str
    strategy: str
    seed: int
    model: str | None
    config: dict[str, Any]
    #: The card's ``version`` when the grid was expanded; a record of another version is redone.
    card_version: int = 1
    #: A continual stream rather than a run on one environment.
    stream: bool = False
    #: A capacity benchmark cell (llmrl.capacity.grid).
    capacity: bool = False


def load_config(path: str | Path, overrides: list[str] | None = None) -> AblateConfig:
    """The experiment in ``path``; a ``stream`` given as a file name (relative to ``path``'s folder) is that
    stream config, less the keys the grid sets per run."""
    values = load_yaml(path)
    if isinstance(values.get("stream"), str):
        stream = load_yaml(Path(path).parent / values["stream"])
        values["stream"] = {k: v for k, v in stream.items() if k not in STREAM_PER_RUN}
    values = apply_overrides(values, overrides or [])
    return build(AblateConfig, values, source=f"experiment config {path}", overrides=overrides or [])


def expand(cfg: AblateConfig) -> list[RunSpec]:
    """The grid's runs in a stable order; fails fast on an unknown environment or a bad loop key."""
    from llmrl.cards import get_card

    if cfg.stream is not None:
        return _expand_stream(cfg)
    if cfg.capacity is not None:
        from llmrl.capacity.grid import expand_capacity

        return expand_capacity(cfg)
    bad = set(cfg.loop) & PER_RUN
    if bad:
        raise UsageError(f"the loop block may not set {', '.join(sorted(bad))}: the experiment sets them per run")
    for env in cfg.reference_scores:
        get_card(env)  # a typo in an environment name fails here, not as a silently raw report
    specs = []
    for env in cfg.envs:
        card, _ = get_card(env)
        loop = {**cfg.loop, **cfg.env_loop.get(env, {})}
        for strategy in cfg.strategies:
            observation = BY_NAME[strategy].observation
            if observation and observation not in card.observations:
                raise UsageError(f"{strategy} needs the {observation!r} observation, which card {card.key} lacks")
            modelless = not BY_NAME[strategy].needs_model
            models = [None] if modelless else cfg.models
            for model in models:
                for seed in cfg.seed_list():
                    config = _run_config(cfg, env, strategy, seed, model, loop)
                    label = "none" if modelless else (model or "default")
                    name = "__".join([env.replace("/", "-").replace(":", "-"), strategy, f"s{seed}",
                                      label.replace("/", "-")])
                    # a long model path could make a name the file system refuses: shortened, the same every time
                    specs.append(RunSpec(short_name(name), env, strategy, seed, model, config, card.version))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise UsageError("the grid has duplicate runs (repeated envs, strategies, seeds or models)")
    return specs


#: StreamConfig keys a stream grid sets per run.
STREAM_PER_RUN = {"strategy", "accumulate", "seed", "model", "device", "dtype", "eval_episodes", "eval_max_steps",
                  "strategy_options", "out"}


def _expand_stream(cfg: AblateConfig) -> list[RunSpec]:
    """Strategies x accumulation modes x models x seeds over the one stream; every config validated."""
    from llmrl.continual.stream import StreamConfig
    from llmrl.models import run_dtype

    assert cfg.stream is not None
    bad = set(cfg.stream) & STREAM_PER_RUN
    if bad:
        raise UsageError(f"the stream block may not set {', '.join(sorted(bad))}: the experiment sets them per run")
    unused = sorted(cfg.model_fields_set & {"env_loop", "ppo", "reference_scores", "portability"})
    if unused:
        raise UsageError(f"a stream grid does not use {', '.join(unused)}: a stream's stages set their own loop "
                         "blocks, PPO takes each card's RL Zoo settings, and a stream reports its own references")
    others = [s for s in cfg.strategies if BY_NAME[s].kind != "edit" and s != "ppo"]
    if others:
        raise UsageError(f"a stream grid runs edit strategies and ppo; {', '.join(others)} cannot be carried "
                         "through a stream")
    specs = []
    for strategy in cfg.strategies:
        ppo = strategy == "ppo"  # no language model, no edits to accumulate: one run per seed
        for accumulate in ["rebuild"] if ppo else cfg.accumulate:
            for model in [None] if ppo else cfg.models:
                for seed in cfg.seed_list():
                    values = {**cfg.stream, "loop": {**cfg.stream.get("loop", {}), **cfg.loop},
                              "strategy": strategy, "accumulate": accumulate, "seed": seed,
                              "model": model, "device": cfg.device, "dtype": run_dtype(cfg.dtype, cfg.device),
                              "eval_episodes": cfg.eval_episodes, "eval_max_steps": cfg.eval_max_steps,
                              "strategy_options": cfg.strategy_options.get(strategy, {})}
                    stream = build(StreamConfig, values, source="the experiment's stream")
                    for stage in stream.stages:  # every stage's loop settings resolve before any run starts
                        stream.stage_config(stage)
                    config = stream.model_dump(mode="json")
                    label = "none" if ppo else (model or "default").replace("/", "-")
                    name = "__".join(["stream", strategy, *([] if ppo else [accumulate]), f"s{seed}", label])
                    specs.append(RunSpec(short_name(name), "stream", strategy, seed, model, config, stream=True))
    return specs


def _run_config(cfg: AblateConfig, env: str, strategy: str, seed: int, model: str | None,
                loop: dict[str, Any]) -> dict[str, Any]:
    """The resolved settings of one run; for editing runs, a validated LoopConfig."""
    from llmrl.models import run_dtype

    shared = {"env": env, "strategy": strategy, "seed": seed, "model": model, "device": cfg.device,
              "dtype": run_dtype(cfg.dtype, cfg.device), "eval_episodes": cfg.eval_episodes,
              "eval_max_steps": cfg.eval_max_steps, "portability": cfg.portability}
    kind = BY_NAME[strategy].kind
    # Every run spends the loop's budget; only an edit run is a loop (the others check the loop's settings
    # as a loop that injects nothing).
    looped = build(LoopConfig, {**loop, **shared, "strategy": strategy if kind == "edit" else "none",
                                "strategy_options": cfg.strategy_options.get(strategy, {})},
                   source=f"loop settings for {env}")
    budget = looped.iterations * looped.steps_per_iteration
    if kind == "edit":
        return {**looped.model_dump(mode="json"), "out": None}
    if kind == "ppo":
        total = cfg.ppo.steps or budget
        run = {**shared, "model": None, "total_steps": total,
               "eval_every": cfg.ppo.eval_every or looped.steps_per_iteration, "n_envs": looped.n_envs}
        # Keys only where they differ from plain PPO at the loop's budget, so earlier records still match.
        if BY_NAME[strategy].observation:
            run["observation"] = BY_NAME[strategy].observation
        if total != budget:
            run["eval_also_at"] = budget
        return run
    return {**shared, "n_envs": looped.n_envs, "model": None if strategy == "random" else model}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


# -- one run ------------------------------------------------------------------------------------------


def execute(spec: RunSpec, results: str, threads: int | None = None) -> RunRecord:
    """Run one grid cell and return its record; never raises (a failure is a record too)."""
    import torch

    claim()  # a worker computes: processes started later see it
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    kind = "stream" if spec.stream else "capacity" if spec.capacity else BY_NAME[spec.strategy].kind
    base = {"run_id": spec.run_id, "env": spec.env, "strategy": spec.strategy, "seed": spec.seed,
            "model": spec.model, "kind": kind, "config": spec.config, "card_version": spec.card_version,
            "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node()}
    folder = Path(results) / "runs" / spec.run_id
    try:
        # left by an attempt that was killed or failed: a run starts from an empty folder, a stream from its
        # last finished stage where it left a checkpoint (llmrl.continual.checkpoint)
        if folder.exists() and not (spec.stream and (folder / CHECKPOINT).exists()):
            shutil.rmtree(folder)
        outcome = _RUNNERS[kind](spec, folder)
        return RunRecord(**{**base, **outcome}, status="ok", wall_seconds=time.perf_counter() - t0)
    except Exception:  # noqa: BLE001 - a failed run is recorded, and the grid goes on
        return RunRecord(**base, status="failed", error=traceback.format_exc(), wall_seconds=time.perf_counter() - t0)


def _point(env_steps: int, returns: list[float]) -> dict[str, Any]:
    return {"env_steps": env_steps, "mean_return": sum(returns) / len(returns), "returns": returns}


def _run_baseline(spec: RunSpec, folder: Path) -> dict[str, Any]:
    from llmrl.baselines import make_baseline
    from llmrl.cards import get_card
    from llmrl.evaluate import eval_seed, evaluate
    from llmrl.models import load_model

    c = spec.config
    card, variant = get_card(spec.env)
    lm = None if spec.strategy == "random" else load_model(spec.model, c["device"], c["dtype"])
    policy = make_baseline(spec.strategy, card, lm, seed=spec.seed)
    result, _ = evaluate(policy, card, spec.strategy, lm.name if lm else None, c["eval_episodes"],
                         seed=eval_seed(spec.seed), n_envs=c["n_envs"], max_steps=c["eval_max_steps"],
                         variant=variant, progress=False)
    returns = result.summary()["returns"]
    return {"model": lm.name if lm else None, "runtime": lm.runtime if lm else None, "env_steps": 0,
            "curve": [_point(0, returns)], "final_mean_return": result.mean_return, "final_returns": returns,
            "portability": _portability(spec, policy, card, variant)}


def _portability(spec: RunSpec, policy: Policy, card: Card, variant: str | None) -> dict | None:
    """The final policy's returns on the card's other variants, on the run's evaluation settings."""
    from llmrl.evaluate import eval_seed, portability

    c = spec.config
    if not c["portability"]:
        return None
    return portability(policy, card, variant, c["eval_episodes"], seed=eval_seed(spec.seed), n_envs=c["n_envs"],
                       max_steps=c["eval_max_steps"])


def _run_edit(spec: RunSpec, folder: Path) -> dict[str, Any]:
    from llmrl.loop import run

    summary = run(LoopConfig(**{**spec.config, "out": folder}), progress=False)
    return {"model": summary.model, "runtime": summary.runtime, "env_steps": summary.env_steps,
            "curve": [_point(r["env_steps"], r["eval_returns"]) for r in summary.rows],
            "final_mean_return": summary.final_mean_return, "final_returns": summary.final_returns,
            "edit": summary.edit, "portability": summary.portability, "phases": summary.phases}


def _run_ppo(spec: RunSpec, folder: Path) -> dict[str, Any]:
    from llmrl.baselines.ppo import train_ppo
    from llmrl.cards import get_card

    c = spec.config
    result = train_ppo(spec.env, spec.seed, c["total_steps"], eval_every=c["eval_every"],
                       eval_episodes=c["eval_episodes"], eval_max_steps=c["eval_max_steps"], out=folder,
                       device="cpu" if c["device"] == "auto" else c["device"], observation=c.get("observation"),
                       eval_also_at=c.get("eval_also_at"))
    card, variant = get_card(spec.env)
    return {"env_steps": result.env_steps, "curve": [_point(p["env_steps"], p["returns"]) for p in result.curve],
            "final_mean_return": result.final_mean_return, "final_returns": result.final_returns,
            "hyperparameters": result.hyperparameters,
            "portability": _portability(spec, result.policy, card, variant)}


def _run_stream(spec: RunSpec, folder: Path) -> dict[str, Any]:
    from llmrl.continual.stream import StreamConfig, run_stream

    summary = run_stream(StreamConfig(**{**spec.config, "out": folder}), progress=False, resume=True)
    return {"model": None if spec.strategy == "ppo" else summary.model, "runtime": summary.runtime,
            "env_steps": summary.env_steps, "stream": summary.to_json(), "phases": summary.phases}


def _run_capacity(spec: RunSpec, folder: Path) -> dict[str, Any]:
    from llmrl.capacity.grid import run_capacity_spec

    return run_capacity_spec(spec, folder)


_RUNNERS: dict[str, Callable[[RunSpec, Path], dict[str, Any]]] = {
    "random": _run_baseline, "prompt": _run_baseline, "edit": _run_edit, "ppo": _run_ppo, "stream": _run_stream,
    "capacity": _run_capacity,
}


# -- records ------------------------------------------------------------------------------------------


def fingerprint(specs: list[RunSpec]) -> str:
    return hashlib.sha256(json.dumps([s.run_id for s in specs]).encode()).hexdigest()[:12]


def experiment_entry(path: Path, cfg: AblateConfig, specs: list[RunSpec]) -> dict[str, Any]:
    """``experiment.json``: this invocation's grid on top, and under ``invocations`` every distinct grid
    that wrote into the folder, so that a grid run in slices (``--set`` a few methods at a time) keeps
    what each slice asked for."""
    entry = {"config": cfg.model_dump(mode="json"), "runs": len(specs), "grid": fingerprint(specs)}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    seen = earlier.get("invocations") or ([{k: earlier[k] for k in entry}] if set(entry) <= set(earlier) else [])
    return {**entry, "invocations": seen if seen and seen[-1] == entry else [*seen, entry]}


def ablate(cfg: AblateConfig, backend: str = "local", workers: int = 1, address: str | None = None,
           on_record: Callable[[RunRecord, int, int], None] | None = None) -> dict[str, Any]:
    """Run every unfinished run of the grid; returns counts and the results folder.

    The folder is locked against a second driver and checked for writing before any run starts. A record
    that cannot be written stops the experiment at once: the runs still queued are cancelled, the records
    already written stay, and the same command resumes once the folder is fixed.
    """
    from llmrl.backends import run_local, run_ray

    if backend not in ("local", "ray"):
        raise UsageError(f"unknown backend {backend!r}; choose local or ray")
    specs = expand(cfg)
    results = cfg.out
    with exclusive(results, "llmrl ablate"):
        writable(results / "runs", "the records folder")
        refuse_auto_redo(cfg.dtype, results, specs)
        todo = [s for s in specs if status(results, s) != "ok"]
        try:
            write_json(results / "experiment.json", experiment_entry(results / "experiment.json", cfg, specs))
        except OSError as exc:
            raise UsageError(f"cannot write {results / 'experiment.json'}: {exc.strerror}") from None
        if backend == "local":
            threads = cfg.threads or share(workers, register=False)
            records = run_local(todo, results, workers, threads)
        else:
            records = run_ray(todo, results, address, cfg.ray_cpus, cfg.ray_gpus, cfg.threads, cfg.ray_runtime_env)
        failed = 0
        try:
            for n, record in enumerate(records, 1):
                try:
                    write_record(results, record)
                except OSError as exc:
                    raise UsageError(f"cannot write {record_path(results, record.run_id)}: {exc.strerror}; stopped "
                                     f"the experiment, keeping the {n - 1} records written before it (the same "
                                     "command resumes from them)") from None
                failed += not record.ok
                if on_record:
                    on_record(record, n, len(todo))
        finally:
            records.close()  # cancels what is still queued when a write failed or the driver was interrupted
    return {"runs": len(specs), "skipped": len(specs) - len(todo), "ran": len(todo), "failed": failed,
            "out": str(results)}

