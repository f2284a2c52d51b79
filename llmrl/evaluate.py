"""Evaluation: seeded episodes of one policy, summarised the same way for every policy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from llmrl.cards import Card
from llmrl.phases import PhaseClock
from llmrl.policy import Policy
from llmrl.rollout import Trajectory, rollout


#: Evaluation episodes are seeded apart from any training or feedback episodes.
EVAL_SEED = 1_000_000


def eval_seed(run_seed: int) -> int:
    """First evaluation seed of a run: every strategy of a run seed plays the same evaluation episodes."""
    return EVAL_SEED + 1_000 * run_seed


@dataclass
class EvalResult:
    env: str
    policy: str
    model: str | None
    seed: int
    episodes: int
    returns: list[float]
    lengths: list[int]
    decisions: int
    wall_seconds: float
    cache_hit_rate: float
    fallback_rate: float

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    def summary(self) -> dict:
        """The JSON object ``llmrl eval --json`` prints."""
        return {
            "env": self.env, "policy": self.policy, "model": self.model, "seed": self.seed,
            "episodes": self.episodes, "returns": self.returns, "lengths": self.lengths,
            "mean_return": self.mean_return, "std_return": float(np.std(self.returns)),
            "mean_length": float(np.mean(self.lengths)), "decisions": self.decisions,
            "decisions_per_s": self.decisions / self.wall_seconds if self.wall_seconds else 0.0,
            "cache_hit_rate": self.cache_hit_rate, "fallback_rate": self.fallback_rate,
            "wall_seconds": self.wall_seconds,
        }


def evaluate(policy: Policy, card: Card, policy_name: str, model: str | None, episodes: int, seed: int = 0,
             n_envs: int = 1, max_steps: int | None = None, variant: str | None = None,
             progress: bool = True, clock: PhaseClock | None = None) -> tuple[EvalResult, list[Trajectory]]:
    """Play ``episodes`` seeded episodes and summarise them; also returns the trajectories.

    ``clock`` gets the rollout's acting and environment seconds (:func:`~llmrl.rollout.rollout`)."""
    before = (policy.stats.decisions, policy.stats.cache_hits, policy.stats.fallbacks)
    env_name = card.key + (f":{variant}" if variant else "")
    with tqdm(total=episodes, desc=f"{policy_name} on {env_name}", unit="ep", disable=not progress,
              leave=False) as bar:
        t0 = time.perf_counter()
        policy.reseed(seed)
        trajectories = rollout(policy, card, episodes, seed, n_envs, max_steps, variant,
                               on_episode=lambda t: (bar.update(1), bar.set_postfix(ret=f"{t.ret:.1f}")),
                               clock=clock)
        wall = time.perf_counter() - t0
    decisions = policy.stats.decisions - before[0]

    def rate(now: int, then: int) -> float:
        return (now - then) / decisions if decisions else 0.0

    result = EvalResult(
        env=env_name, policy=policy_name, model=model, seed=seed, episodes=episodes,
        returns=[t.ret for t in trajectories], lengths=[t.length for t in trajectories],
        decisions=decisions, wall_seconds=wall,
        cache_hit_rate=rate(policy.stats.cache_hits, before[1]),
        fallback_rate=rate(policy.stats.fallbacks, before[2]),
    )
    return result, trajectories


def portability(policy: Policy, card: Card, trained_on: str | None, episodes: int, seed: int = 0,
                n_envs: int = 1, max_steps: int | None = None, clock: PhaseClock | None = None) -> dict[str, dict]:
    """Return on every variant of ``card`` other than ``trained_on``: DESIGN's portability metric.

    Knowledge drawn from one physics or game mode may or may not carry over to
    another; the variants (heavier pole, larger lake, ...) measure that. Each
    variant maps to ``{"mean_return", "returns"}``. A policy that reads raw
    observations (PPO) cannot play a variant whose observation space differs
    from the one it was trained on; such a variant maps to ``{"skipped": why}``.
    """
    out: dict[str, dict] = {}
    if not card.variants:
        return out
    reads = policy.reads_observations
    trained_space = _observation_space(card, trained_on, policy.observation) if reads else None
    for name, spec in card.variants.items():
        if name == trained_on or spec.mirrored:  # mirrored controls contradict the task: not a portability test
            continue
        if reads and (space := _observation_space(card, name, policy.observation)) != trained_space:
            out[name] = {"skipped": f"observation space {space} differs from the trained {trained_space}"}
            continue
        result, _ = evaluate(policy, card, f"portability:{name}", None, episodes, seed=seed, n_envs=n_envs,
                             max_steps=max_steps, variant=name, progress=False, clock=clock)
        out[name] = {"mean_return": result.mean_return, "returns": result.returns}
    return out


def _observation_space(card: Card, variant: str | None, observation: str | None):
    env = card.make_env(variant, observation=observation)
    try:
        return env.observation_space
    finally:
        env.close()
