"""Rollouts: a policy plays seeded episodes in K environments stepped together.

Every step, the observation texts of all K running environments go to the
policy in one call (one batched forward). Episode ``i`` is reset with seed
``seed + i`` whichever environment runs it, so results do not depend on K's
scheduling beyond numerical batching effects, and the same seed gives the same
episodes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llmrl.cards import Card
from llmrl.errors import UsageError
from llmrl.phases import PhaseClock
from llmrl.policy import Policy


@dataclass
class Step:
    text: str
    situation: str
    action: int
    reward: float
    #: The card's potential of the state the action was taken in (None: the card has none).
    potential: float | None = None


@dataclass
class Trajectory:
    """One episode as the policy saw and played it."""

    seed: int
    steps: list[Step] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    #: The card's potential of the state after the last step (None after termination or without one).
    end_potential: float | None = None

    @property
    def ret(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def length(self) -> int:
        return len(self.steps)


def rollout(policy: Policy, card: Card, episodes: int, seed: int = 0, n_envs: int = 1,
            max_steps: int | None = None, variant: str | None = None,
            on_episode: Callable[[Trajectory], None] | None = None,
            step_budget: int | None = None, clock: PhaseClock | None = None) -> list[Trajectory]:
    """Play ``episodes`` episodes; returns them in episode order.

    With ``step_budget``, play stops once that many environment steps were
    taken in all: running episodes end truncated and unstarted ones are dropped.
    With ``clock``, the seconds spent choosing actions and stepping the
    environments are added to its ``acting`` and ``env``.
    """
    if episodes < 1 or n_envs < 1:
        raise UsageError("episodes and n_envs must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise UsageError("max_steps must be >= 1")
    values = list(card.actions.values())
    envs = [card.make_env(variant, observation=policy.observation) for _ in range(min(n_envs, episodes))]
    done: list[Trajectory | None] = [None] * episodes
    running: dict[int, tuple[int, Trajectory, object]] = {}  # slot -> (episode, trajectory, obs)
    next_episode = 0
    total_steps = 0
    acting = stepping = 0.0
    now = time.perf_counter

    def start(slot: int) -> None:
        nonlocal next_episode, stepping
        ep = next_episode
        next_episode += 1
        t0 = now()
        obs, _ = envs[slot].reset(seed=seed + ep)
        stepping += now() - t0
        running[slot] = (ep, Trajectory(seed + ep), obs)

    try:
        for slot in range(len(envs)):
            start(slot)
        while running:
            slots = sorted(running)
            if step_budget is not None:
                slots = slots[:max(step_budget - total_steps, 0)]
            seen = [card.text(running[s][2], envs[s]) for s in slots]
            t0 = now()
            if policy.reads_observations:
                actions = policy.act_on_observations([running[s][2] for s in slots], slots)
            else:
                actions = policy.act([text for text, _ in seen], slots)
            acting += now() - t0
            for slot, (text, situation), a in zip(slots, seen, actions):
                ep, traj, _ = running[slot]
                potential = card.potential(running[slot][2], envs[slot])
                t0 = now()
                obs, reward, terminated, truncated, _ = envs[slot].step(values[a])
                stepping += now() - t0
                traj.steps.append(Step(text, situation, int(a), float(reward), potential))
                total_steps += 1
                out_of_budget = step_budget is not None and total_steps >= step_budget
                if (max_steps is not None and traj.length >= max_steps) or out_of_budget:
                    truncated = True
                if terminated or truncated:
                    traj.terminated, traj.truncated = bool(terminated), bool(truncated and not terminated)
                    if not terminated:
                        traj.end_potential = card.potential(obs, envs[slot])
                    done[ep] = traj
                    del running[slot]
                    if on_episode:
                        on_episode(traj)
                    if next_episode < episodes and not out_of_budget:
                        start(slot)
                else:
                    running[slot] = (ep, traj, obs)
            if step_budget is not None and total_steps >= step_budget:
                for slot, (ep, traj, obs) in running.items():
                    traj.truncated = True
                    traj.end_potential = card.potential(obs, envs[slot])
                    done[ep] = traj
                running.clear()
    finally:
        for env in envs:
            env.close()
        if clock is not None:
            clock.acting += acting
            clock.env += stepping
    return [t for t in done if t is not None]


def save_trajectories(path: Path, trajectories: list[Trajectory], action_words: list[str]) -> None:
    """JSON Lines, one episode a line; actions are stored as words so files outlive card edits."""
    with open(path, "w") as f:
        for t in trajectories:
            row = asdict(t)
            row["return"] = t.ret
            for step in row["steps"]:
                step["action"] = action_words[step["action"]]
            f.write(json.dumps(row) + "\n")


def load_trajectories(path: Path, action_words: list[str]) -> list[Trajectory]:
    """Read :func:`save_trajectories` output; unknown action words are an error."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read trajectory file {path}: {exc.strerror}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            steps = [Step(s["text"], s["situation"], action_words.index(s["action"]), float(s["reward"]),
                          s.get("potential")) for s in row["steps"]]
            out.append(Trajectory(int(row["seed"]), steps, bool(row.get("terminated")), bool(row.get("truncated")),
                                  row.get("end_potential")))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}:{n}: not a trajectory line ({type(exc).__name__}: {exc})") from exc
    return out
