"""``llmrl bench run``: where one editing-loop run's time goes, and how long it takes to solve its task.

It runs the loop once, as ``llmrl run`` would, and reports the seconds per
phase (:mod:`llmrl.phases`) and the run's efficiency. With a threshold (the
environment's own ``reward_threshold`` by default: 475 on CartPole), it also
reports the wall-clock seconds from the run's start until an evaluation after
some feedback first reached it, and trains PPO (RL Zoo settings) in the same process on the same
machine until its evaluations reach the same threshold. Both are timed the
same way: from the start (the loop's model loading included), every
evaluation included, PPO evaluating after every ``steps_per_iteration``
environment steps, as often as the loop does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from llmrl.cards import get_card
from llmrl.config import LoopConfig
from llmrl.loop import run


def default_threshold(env: str) -> float | None:
    """The environment's registered ``reward_threshold`` (CartPole-v1: 475), or None."""
    card, variant = get_card(env)
    made = card.make_env(variant)
    try:
        found = made.spec.reward_threshold if made.spec is not None else None
    finally:
        made.close()
    return None if found is None else float(found)


def first_reaching(points: list[tuple[int, float, float]], threshold: float) -> tuple[int, float] | None:
    """(env steps, seconds) of the first (env steps, seconds, mean return) point at or above ``threshold``
    after learning began: an untrained policy that happens to play well (PPO's initial network on CartPole
    can) has learned nothing yet."""
    return next(((steps, seconds) for steps, seconds, ret in points if steps > 0 and ret >= threshold), None)


def bench_run(cfg: LoopConfig, threshold: float | None = None, ppo: bool = True,
              ppo_steps: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the loop once and PPO to the same threshold; the figures ``llmrl bench run`` prints.

    ``ppo_steps`` caps PPO's training (default: the RL Zoo budget of the card).
    """
    threshold = default_threshold(cfg.env) if threshold is None else threshold
    with tempfile.TemporaryDirectory(prefix="llmrl-bench-") as tmp:
        cfg = cfg.model_copy(update={"out": cfg.out or Path(tmp) / "run"})
        points: list[tuple[int, float, float]] = []
        start = time.perf_counter()
        summary = run(cfg, progress=progress, on_row=lambda row: points.append(
            (row["env_steps"], time.perf_counter() - start, row["eval_mean_return"])))
    result: dict[str, Any] = {
        "env": cfg.env, "strategy": cfg.strategy, "model": summary.model, "runtime": summary.runtime,
        "env_steps": summary.env_steps, "final_mean_return": summary.final_mean_return,
        "wall_seconds": summary.wall_seconds, "efficiency": summary.efficiency, "phases": summary.phases,
        "threshold": threshold, "steps_to_threshold": None, "seconds_to_threshold": None,
        "ppo_steps_to_threshold": None, "ppo_seconds_to_threshold": None, "ppo_steps": None,
        "ppo_wall_seconds": None, "ratio_to_ppo": None,
    }
    if threshold is None:
        return result
    reached = first_reaching(points, threshold)
    if reached:
        result["steps_to_threshold"], result["seconds_to_threshold"] = reached
    if ppo:
        result.update(_ppo_to_threshold(cfg, threshold, ppo_steps))
        if reached and result["ppo_seconds_to_threshold"]:
            result["ratio_to_ppo"] = result["seconds_to_threshold"] / result["ppo_seconds_to_threshold"]
    return result


def _ppo_to_threshold(cfg: LoopConfig, threshold: float, steps: int | None) -> dict[str, Any]:
    from llmrl.baselines.ppo import PPOHyperparameters, load_hyperparameters, train_ppo
    from llmrl.config import build

    hp = build(PPOHyperparameters, load_hyperparameters(cfg.env, None), source="PPO hyper-parameters")
    budget = steps or hp.n_timesteps or 1_000_000
    result = train_ppo(cfg.env, cfg.seed, budget, eval_every=cfg.steps_per_iteration,
                       eval_episodes=cfg.eval_episodes, eval_max_steps=cfg.eval_max_steps,
                       device="cpu" if cfg.device == "auto" else cfg.device, stop_at=threshold)
    reached = first_reaching([(p["env_steps"], p["seconds"], p["mean_return"]) for p in result.curve], threshold)
    return {"ppo_steps_to_threshold": reached[0] if reached else None,
            "ppo_seconds_to_threshold": reached[1] if reached else None,
            "ppo_steps": result.env_steps, "ppo_wall_seconds": result.wall_seconds}


def describe_bench(result: dict[str, Any]) -> list[str]:
    """The lines ``llmrl bench run`` prints."""
    from llmrl.phases import describe

    lines = [f"{result['strategy']} on {result['env']} ({result['model']}): final return "
             f"{result['final_mean_return']:.1f} after {result['env_steps']:,} env steps",
             describe(result["phases"], result["wall_seconds"])]
    if result["threshold"] is None:
        return lines

    def reached(prefix: str) -> str:
        steps, seconds = result[f"{prefix}steps_to_threshold"], result[f"{prefix}seconds_to_threshold"]
        return "not reached" if seconds is None else f"{seconds:.1f}s ({steps:,} env steps)"

    lines.append(f"to reach {result['threshold']:g}: {reached('')}")
    if result["ppo_steps"] is not None:
        ratio = "" if result["ratio_to_ppo"] is None else f"; {result['ratio_to_ppo']:.2f}x PPO's time"
        lines.append(f"PPO to reach it: {reached('ppo_')} (trained {result['ppo_steps']:,} steps in "
                     f"{result['ppo_wall_seconds']:.1f}s){ratio}")
    return lines
