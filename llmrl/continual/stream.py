"""A continual stream: one learner carried through a sequence of tasks, scored on every task after each.

A stream is a list of stages; each stage is a card (with an optional variant,
e.g. ``CartPole-v1:mirrored``) and a feedback budget. One model, one
knowledge base and one injector (a :class:`~llmrl.learner.Learner`) go
through all of them, editing as each stage's feedback arrives. Before the
first stage and after each one, the current policy is evaluated on every
stage on fixed evaluation seeds: row ``i`` of the return matrix is the policy
after stage ``i`` (row 0 the untouched model). Each stage is also scored by a
random policy and by the card's reference table (:mod:`llmrl.oracle`), which
normalise the matrix per stage to 0 (random) .. 1 (table); the metrics of
:mod:`llmrl.continual.metrics` are computed on that matrix.

Task boundaries are known to the learner, as in task-incremental continual
learning: with ``reset_feedback`` (the default) a stage's action values are
estimated from that stage's feedback only, so evidence from a task whose
rules have since changed does not outvote the new task's. Held items stay
until that evidence contradicts them, which is what erasing and modifying
knowledge over time measures.

Outputs in ``out``: ``config.json``, ``runtime.json``, ``stages.jsonl`` (one
line per stage, row 0 included, with the seconds each phase took since the
previous line), ``items.json``, TensorBoard scalars and ``matrix.png``; while it runs, ``checkpoint.json``
after each stage, from which ``resume`` goes on (:mod:`llmrl.continual.checkpoint`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, create_model, model_validator
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from llmrl.cards import Card, get_card
from llmrl.config import LoopConfig, Strict, build
from llmrl.continual import checkpoint as ckpt
from llmrl.continual.metrics import StreamMetrics, normalise, stream_metrics
from llmrl.errors import UsageError
from llmrl.evaluate import eval_seed, evaluate
from llmrl.folders import atomic_write, exclusive, writable
from llmrl.learner import keep_settings, make_injector
from llmrl.oracle import table_policy
from llmrl.phases import STREAM_PHASES, PhaseClock, efficiency
from llmrl.policy import Policy, RandomPolicy
from llmrl.strategies import ACCUMULATE, EDIT_STRATEGIES

#: LoopConfig keys the stream sets itself; its ``loop`` block holds the others (thresholds, exploration).
STREAM_SETS = {"env", "iterations", "steps_per_iteration", "portability", "out", "strategy", "seed", "model",
               "device", "dtype", "eval_episodes", "eval_max_steps", "n_envs", "base_policy", "strategy_options"}


class Stage(Strict):
    """One task of the stream, its feedback budget and the loop settings of its own (e.g. gamma, n_step)."""

    env: str
    iterations: int = Field(ge=1)
    steps_per_iteration: int = Field(ge=1)
    #: Overrides of the stream's ``loop`` for this stage's knowledge (a card's items are estimated with the
    #: settings of the card's first stage).
    loop: dict[str, Any] = Field(default_factory=dict)


#: The loop settings a stream shares across its stages: LoopConfig's fields that the stream does not set.
LoopSettings = create_model("LoopSettings", __base__=Strict, **{
    name: (field.annotation, field) for name, field in LoopConfig.model_fields.items() if name not in STREAM_SETS})


class StreamConfig(Strict):
    """Everything ``llmrl continual`` needs: one strategy and seed through one stream."""

    stages: list[Stage] = Field(min_length=1)
    #: An edit strategy, ``none`` (collect knowledge, edit nothing) or ``ppo`` (one PPO learner per card, trained
    #: on through its card's stages: the catastrophic-forgetting reference, and across cards the per-stage one).
    strategy: Literal[EDIT_STRATEGIES + ("none", "ppo")]  # type: ignore[valid-type]
    #: ``rebuild``: every change of the knowledge undoes the edit in force and injects every item held;
    #: ``sequential``: each change is edited on top of the earlier edits (see :class:`~llmrl.learner.Learner`).
    accumulate: Literal[ACCUMULATE] = "rebuild"  # type: ignore[valid-type]
    base_policy: Literal["zero-shot", "expert-hint", "few-shot"] = "zero-shot"
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = Field(0, ge=0)
    n_envs: int = Field(8, ge=1)
    eval_episodes: int = Field(20, ge=1)
    eval_max_steps: int | None = Field(None, ge=1)
    #: Loop settings shared by every stage (gamma, z, min_support, explore_temperature, locality, ...).
    loop: LoopSettings = Field(default_factory=LoopSettings)  # type: ignore[valid-type]
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    #: Estimate each stage's action values from its own feedback only (the learner knows a stage began).
    reset_feedback: bool = True
    #: Per stage environment, the raw return that counts as mastered: the report gives the environment
    #: steps each stage took to reach it.
    target: dict[str, float] = Field(default_factory=dict)
    out: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _stream_sets(cls, values: Any) -> Any:
        loop = values.get("loop") if isinstance(values, dict) else None
        bad = set(loop) & STREAM_SETS if isinstance(loop, dict) else set()
        if bad:
            raise ValueError(f"the loop block may not set {', '.join(sorted(bad))}: the stream sets them")
        return values

    @model_validator(mode="after")
    def _targets(self) -> StreamConfig:
        unknown = set(self.target) - {s.env for s in self.stages}
        if unknown:
            raise ValueError(f"target names environments that are no stage: {', '.join(sorted(unknown))}")
        return self

    def stage_config(self, stage: Stage) -> LoopConfig:
        """The stage as a LoopConfig: its budget plus the stream's settings."""
        bad = set(stage.loop) & STREAM_SETS
        if bad:
            raise UsageError(f"stage {stage.env}: its loop block may not set {', '.join(sorted(bad))}")
        return build(LoopConfig, {**self.loop.model_dump(), **stage.loop, "env": stage.env,
                                  "iterations": stage.iterations, "steps_per_iteration": stage.steps_per_iteration,
                                  "strategy": "none" if self.strategy == "ppo" else self.strategy,
                                  "seed": self.seed, "model": self.model, "device": self.device,
                                  "dtype": self.dtype, "n_envs": self.n_envs, "eval_episodes": self.eval_episodes,
                                  "eval_max_steps": self.eval_max_steps, "base_policy": self.base_policy,
                                  "strategy_options": self.strategy_options, "portability": False},
                     source=f"stream stage {stage.env}")


@dataclass(frozen=True)
class StreamSummary:
    """What a stream ends with; :meth:`to_json` is what ``llmrl continual --json`` prints."""

    strategy: str
    #: ``-`` for PPO, which accumulates no edits.
    accumulate: str
    seed: int
    #: The language model's name, or ``ppo``.
    model: str
    #: Device, dtype and torch threads the language model ran with (None for PPO).
    runtime: dict[str, str | int] | None
    stages: list[str]
    #: Normalised per stage (0 random, 1 the reference table); None where a stage has no table or its table
    #: scores what random play does (then the metrics are of ``raw_matrix``).
    matrix: list[list[float]] | None
    raw_matrix: list[list[float]]
    random_returns: list[float]
    reference_returns: list[float | None]
    metrics: StreamMetrics
    #: Per stage, the environment steps from its start until its return first reached its target.
    steps_to_target: list[int | None]
    env_steps: int
    items_inserted: int
    items_modified: int
    items_erased: int
    #: Sequential accumulation: items injected again to take out an erased item's edit.
    items_replayed: int
    #: The joint upper bound: each stage's raw return with every card's final items injected at once on the
    #: untouched model (with ``rebuild`` that is the final row by construction; None for PPO and ``none``).
    joint_returns: list[float] | None
    #: ACC of ``joint_returns``, on the metrics' scale (normalised where the matrix is).
    acc_joint: float | None
    out: str
    #: The stages after which an earlier process stopped and the stream went on from its checkpoint.
    resumed_after: list[int]
    #: Seconds per phase over the whole stream (:data:`~llmrl.phases.STREAM_PHASES`), with ``acting`` and ``env``.
    phases: dict[str, float]
    wall_seconds: float

    @property
    def stage_returns(self) -> list[float]:
        """R[i][i]: each stage's raw return when it ended."""
        return [self.raw_matrix[i + 1][i] for i in range(len(self.stages))]

    def to_json(self) -> dict[str, Any]:
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}
        return {**flat, **self.metrics.to_json(), "stage_returns": self.stage_returns,
                "efficiency": efficiency(self.phases, self.wall_seconds)}


def run_stream(cfg: StreamConfig, progress: bool = True, on_stage: Callable[[dict], None] | None = None,
               resume: bool = False) -> StreamSummary:
    """Run the stream; writes its outputs to ``cfg.out`` and returns the summary.

    ``resume``: go on after the last stage of the checkpoint in ``cfg.out`` where it was written for this
    configuration (an editing stream whose stages estimate from their own feedback); else start afresh.
    """
    stage_cfgs = [cfg.stage_config(s) for s in cfg.stages]
    tasks = [get_card(s.env) for s in cfg.stages]
    for card, variant in tasks:
        card.make_env(variant).close()
    out = cfg.out or Path("runs") / f"stream-{cfg.strategy}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    edits = cfg.strategy not in ("none", "ppo")
    injector = make_injector(cfg.strategy, dict(cfg.strategy_options), out) if edits else None
    with exclusive(out, "llmrl continual"):
        writable(out, "the stream's folder")
        resumable = cfg.strategy != "ppo" and cfg.reset_feedback
        saved = ckpt.load(out, cfg.model_dump(mode="json")) if resume and resumable else None
        if saved is None:
            _clear(out)
        return _stream(cfg, stage_cfgs, tasks, injector, out, progress, on_stage, resumable, saved)


def _clear(out: Path) -> None:
    """Take out what an earlier run of the stream left: it starts from its first stage."""
    for name in ("stages.jsonl", "items.json", "matrix.png", "injector.json", ckpt.NAME):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def _stream(cfg: StreamConfig, stage_cfgs: list[LoopConfig], tasks: list[tuple[Card, str | None]], injector: Any,
            out: Path, progress: bool, on_stage: Callable[[dict], None] | None, resumable: bool,
            saved: ckpt.Checkpoint | None) -> StreamSummary:
    from llmrl.continual.agents import EditingAgent, PPOAgent
    from llmrl.continual.figure import plot_matrix

    start, clock = time.perf_counter(), PhaseClock(STREAM_PHASES)
    with clock.phase("setup"):
        agent: EditingAgent | PPOAgent = (
            PPOAgent(cfg.seed, cfg.device, out, clock) if cfg.strategy == "ppo"
            else EditingAgent(stage_cfgs, [c for c, _ in tasks], injector, cfg.accumulate, out, clock))
    runtime = {k: (agent.runtime or {}).get(k) for k in ("device", "dtype")}
    if saved is not None and saved.runtime != runtime:
        print(f"llmrl: the checkpoint in {out} ran on {saved.runtime}, this process on {runtime}: the stream "
              "starts again from its first stage", file=sys.stderr, flush=True)
        saved = None
        _clear(out)
    config = cfg.model_dump(mode="json")
    atomic_write(out / "config.json", json.dumps(config, indent=2))
    if injector is not None:
        keep_settings(out, cfg.strategy, dict(cfg.strategy_options))
    envs = [s.env for s in cfg.stages]

    def score(p: Policy, env: str, phase: str = "evaluate") -> float:
        card, variant = get_card(env)
        with clock.phase(phase):
            result, _ = evaluate(p, card, "stream", None, cfg.eval_episodes, seed=eval_seed(cfg.seed),
                                 n_envs=cfg.n_envs, max_steps=cfg.eval_max_steps, variant=variant, progress=False,
                                 clock=clock)
        return result.mean_return

    def row(known: dict[str, float] | None = None, phase: str = "evaluate") -> list[float]:
        """Every stage's return now; ``known``: returns this very policy was just scored at."""
        seen = dict(known or {})  # and a task that recurs in the stream is scored once per row
        for env, (card, _) in zip(envs, tasks):
            if env not in seen:
                seen[env] = score(agent.policy_for(card), env, phase)
        return [seen[env] for env in envs]

    if saved is None:
        random_returns = [score(RandomPolicy(get_card(e)[0].action_words, seed=cfg.seed), e, "references")
                          for e in envs]
        tables = [table_policy(c, v) for c, v in tasks]
        reference = [score(t, e, "references") if t is not None else None for t, e in zip(tables, envs)]
        agent.begin(*tasks[0], cfg.reset_feedback)
        raw = [row()]
        totals = dict.fromkeys(("insert", "modify", "erase"), 0)
        steps_to_target: list[int | None] = []
        env_steps, it, done, resumed_after = 0, 0, 0, []
        logged = dict.fromkeys(clock.snapshot(), 0.0)  # the clock when the last line was written
    else:
        assert isinstance(agent, EditingAgent)
        with clock.phase("setup"):
            agent.restore(saved.agent)
        ckpt.truncate_lines(out, saved.stage)
        random_returns, reference, raw = saved.random_returns, saved.reference_returns, saved.raw
        totals, steps_to_target, env_steps, it = saved.totals, saved.steps_to_target, saved.env_steps, saved.iteration
        done, resumed_after = saved.stage, [*saved.resumed_after, saved.stage]
        start -= saved.wall_seconds
        logged = dict(saved.phases)
        clock.restore({k: saved.phases[k] + v for k, v in clock.snapshot().items()})
        if done == 0:
            agent.begin(*tasks[0], cfg.reset_feedback)
    writer = SummaryWriter(str(out / "tensorboard"))

    def timed(line: dict) -> dict:
        nonlocal logged
        now = clock.snapshot()
        line["phases"], logged = PhaseClock.since(logged, now), now
        return line

    def logged_stage(line: dict) -> None:
        _log(out, writer, timed(line), on_stage)
        if resumable:
            ckpt.save(out, config, ckpt.Checkpoint(
                line["stage"], it, env_steps, raw, random_returns, reference, steps_to_target, totals,
                logged, time.perf_counter() - start, runtime, agent.state(), resumed_after))  # type: ignore[union-attr]

    bar = tqdm(total=sum(s.iterations for s in cfg.stages), desc=f"{cfg.strategy} stream", unit="it",
               disable=not progress, initial=sum(s.iterations for s in cfg.stages[:done]))
    try:
        if saved is None:
            logged_stage({"stage": 0, "env": None, "row": raw[0], "env_steps": 0})
        for k, (stage, (card, variant)) in enumerate(zip(cfg.stages, tasks), 1):
            if k <= done:
                continue
            if k > 1:
                agent.begin(card, variant, cfg.reset_feedback)
            target = cfg.target.get(stage.env)
            curve = [(0, raw[-1][k - 1], False)]
            stage_steps, changed = 0, False
            for _ in range(stage.iterations):
                bar.update(1)
                it += 1
                stage_steps += agent.learn(card, variant, it, stage.steps_per_iteration)
                changed |= agent.changed
                # no edit: the policy is the one the last point scored, on the same seeds
                curve.append((stage_steps, score(agent.policy_for(card), stage.env), False) if agent.changed
                             else (stage_steps, curve[-1][1], True))
                writer.add_scalar("stage_return", curve[-1][1], env_steps + stage_steps)
            env_steps += stage_steps
            reached = next((s for s, r, _ in curve if target is not None and r >= target), None)
            steps_to_target.append(reached)
            # the curve's last point played this stage already; a stage that edited nothing left every policy as
            # it was, and one whose edits stay on its card's policy left the other cards' policies
            known = {stage.env: curve[-1][1]}
            if not agent.reaches_every_card:
                known |= {e: raw[-1][j] for j, (e, (c, _)) in enumerate(zip(envs, tasks)) if c.key != card.key}
            raw.append(row(known) if changed else list(raw[-1]))
            info = agent.stage_info()
            for kind in totals:
                totals[kind] += info.get(f"items_{kind}", 0)
            logged_stage({"stage": k, "env": stage.env, "row": raw[-1], "env_steps": env_steps,
                          "stage_steps": stage_steps, "target": target, "steps_to_target": reached,
                          "curve": [{"env_steps": s, "mean_return": r, "carried": c} for s, r, c in curve], **info})
        with clock.phase("joint"):
            joint = agent.joint() if isinstance(agent, EditingAgent) else None
        joint_returns = None if joint is None else row(phase="joint") if joint else list(raw[-1])
    finally:
        bar.close()
        writer.close()
        agent.finish(out)
    # Normalised where every stage has a table that scores apart from random play (a short step cap can
    # make them equal); otherwise the metrics are on raw returns.
    scaled = all(r is not None and r != low for r, low in zip(reference, random_returns))
    normalised = normalise(raw, random_returns, reference) if scaled else None  # type: ignore[arg-type]
    acc_joint = None
    if joint_returns is not None:
        scored = normalise([joint_returns], random_returns, reference)[0] if scaled else joint_returns  # type: ignore
        acc_joint = sum(scored) / len(scored)
    summary = StreamSummary(
        strategy=cfg.strategy, accumulate="-" if cfg.strategy == "ppo" else cfg.accumulate, seed=cfg.seed,
        model=agent.model, runtime=agent.runtime,
        stages=envs, matrix=normalised, raw_matrix=raw, random_returns=random_returns, reference_returns=reference,
        metrics=stream_metrics(normalised or raw), steps_to_target=steps_to_target, env_steps=env_steps,
        items_inserted=totals["insert"], items_modified=totals["modify"], items_erased=totals["erase"],
        items_replayed=agent.replayed, joint_returns=joint_returns, acc_joint=acc_joint, out=str(out),
        resumed_after=resumed_after, phases=clock.snapshot(), wall_seconds=time.perf_counter() - start)
    atomic_write(out / "matrix.png", plot_matrix(normalised or raw, envs, f"{cfg.strategy} ({cfg.accumulate}), "
                                                  f"seed {cfg.seed}", normalised is not None))
    (out / ckpt.NAME).unlink(missing_ok=True)  # the stream is whole: nothing to go on from
    return summary


def _log(out: Path, writer: SummaryWriter, line: dict, on_stage: Callable[[dict], None] | None) -> None:
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    for j, value in enumerate(line["row"]):
        writer.add_scalar(f"matrix/stage{j + 1}", value, line["stage"])
    writer.flush()
    if on_stage:
        on_stage(line)
