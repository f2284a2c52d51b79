"""Feedback to knowledge: action values per situation from returns-to-go, then knowledge items.

The policy's own exploratory trajectories are the evidence. Each step's
discounted return-to-go is a Monte-Carlo sample of the value of taking that
action in that situation (under the behaviour policy). Where one action's mean
beats every other's by more than ``z`` standard errors, with enough visits, a
knowledge item says so: *insert* where the policy had no preference, *modify*
where it preferred a worse action, *retain* where it already prefers the best
one (IKE's retain demonstrations: an edit for one situation must not undo the
right behaviour in another). A :class:`KnowledgeBase` keeps the items across
iterations and *erases* one when fresh evidence contradicts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from llmrl.policy import Policy
from llmrl.rollout import Trajectory


@dataclass
class KnowledgeItem:
    """"In situation S, action A is better", with the evidence for it.

    ``examples`` are observation texts of the situation the item was drawn
    from: the contexts an injector trains or edits on, and the reliability
    metric's test set.
    """

    situation: str
    action: str
    value_gap: float
    support: int
    kind: Literal["insert", "modify", "retain"] = "insert"
    source: str = "rollout"
    iteration: int = 0
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ActionValue:
    mean: float
    se: float
    n: int


def returns_to_go(rewards: list[float], gamma: float) -> np.ndarray:
    out = np.zeros(len(rewards))
    acc = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        acc = rewards[i] + gamma * acc
        out[i] = acc
    return out


def n_step_returns(t: Trajectory, gamma: float, n: int) -> np.ndarray:
    """Per step: the discounted rewards of the next ``n`` steps, plus the discounted potential
    reached then, minus the potential where the action was taken.

    With the card's potential as a rough value function this is an n-step
    advantage estimate: shaped rewards summed over n steps (the sum
    telescopes). A missing potential counts as 0, as does a terminal state.
    """
    rewards = np.array([s.reward for s in t.steps])
    end = 0.0 if t.terminated else (t.end_potential or 0.0)
    phi = np.array([s.potential or 0.0 for s in t.steps] + [end])
    out = np.empty(t.length)
    for i in range(t.length):
        j = min(i + n, t.length)
        out[i] = np.dot(gamma ** np.arange(j - i), rewards[i:j]) + gamma ** (j - i) * phi[j] - phi[i]
    return out


def action_values(trajectories: list[Trajectory], action_words: list[str], gamma: float,
                  n_step: int | None = None) -> dict[str, dict[str, ActionValue]]:
    """Mean and standard error of each (situation, action)'s return: the Monte-Carlo return-to-go,
    or with ``n_step`` the potential-bootstrapped n-step return of :func:`n_step_returns`.

    A truncated episode's last steps are left out where their returns are cut
    short by the truncation rather than decided by the action: the last
    ``1 / (1 - gamma)`` steps for Monte-Carlo returns, the last ``n_step``
    when the truncated episode has no potential to bootstrap from.
    """
    samples: dict[str, dict[str, list[float]]] = {}
    for t in trajectories:
        if n_step is None:
            rtg = returns_to_go([s.reward for s in t.steps], gamma)
            cut = round(1 / (1 - gamma)) if gamma < 1 else 0
        else:
            rtg = n_step_returns(t, gamma, n_step)
            cut = n_step if t.end_potential is None else 0
        usable = t.length - cut if t.truncated else t.length
        for step, g in zip(t.steps[:max(usable, 0)], rtg):
            samples.setdefault(step.situation, {}).setdefault(action_words[step.action], []).append(float(g))
    values = {}
    for situation, by_action in samples.items():
        values[situation] = {}
        for word, gs in by_action.items():
            arr = np.asarray(gs)
            se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.inf
            values[situation][word] = ActionValue(float(arr.mean()), se, len(arr))
    return values


def texts_by_situation(trajectories: list[Trajectory]) -> dict[str, list[str]]:
    """Distinct observation texts per situation, in first-seen order."""
    out: dict[str, dict[str, None]] = {}
    for t in trajectories:
        for s in t.steps:
            out.setdefault(s.situation, {})[s.text] = None
    return {k: list(v) for k, v in out.items()}


def spread(items: list[str], k: int) -> list[str]:
    """``k`` elements spread evenly through ``items`` (all of them when there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def preferences(policy: Policy, texts: dict[str, list[str]], margin: float) -> dict[str, str | None]:
    """The action the policy prefers in each situation, or None where it has no clear preference.

    The preference is the argmax of the policy's mean action distribution over
    the situation's texts; "no preference" means the top two are within ``margin``.
    """
    scores = getattr(policy, "scores", None)
    out: dict[str, str | None] = {}
    for situation, ts in texts.items():
        if scores is None:  # a policy without scores (random) prefers nothing
            out[situation] = None
            continue
        probs = torch.softmax(scores(ts), dim=-1).mean(0)
        top = torch.topk(probs, 2).values if probs.numel() > 1 else probs
        out[situation] = (None if probs.numel() > 1 and float(top[0] - top[1]) < margin
                          else policy.action_words[int(probs.argmax())])
    return out


@dataclass
class Extraction:
    """Thresholds for turning action values into items (the loop fills them from its LoopConfig, whose
    defaults these are)."""

    gamma: float = 0.95
    z: float = 2.0
    min_support: int = 20
    #: The smallest value gap, in return units, that makes an item (besides ``z`` standard errors).
    min_gap: float = 0.0
    max_examples: int = 16
    preference_margin: float = 0.1
    #: Estimate from all feedback so far, not only the latest batch: thin batches flip signs.
    pool: bool = True
    #: Standard errors by which new evidence must beat a held item to erase it.
    erase_z: float = 3.0
    #: Standard errors that suffice to bring back an action this situation held before (an erased item's):
    #: earlier evidence for it makes a smaller margin believable when a task returns. None: ``erase_z``.
    reinstate_z: float | None = None
    #: Score actions by potential-bootstrapped n-step returns instead of Monte-Carlo returns.
    n_step: int | None = None


class KnowledgeBase:
    """The items in force, one per situation, updated from each iteration's feedback."""

    def __init__(self, settings: Extraction | None = None):
        self.settings = settings or Extraction()
        self.items: dict[str, KnowledgeItem] = {}
        self.erased: list[KnowledgeItem] = []
        self.feedback: list[Trajectory] = []

    def best(self, values: dict[str, ActionValue], z: float) -> tuple[str, float, float] | None:
        """(action, gap, gap standard error) when one action is best by ``z`` standard errors, else None."""
        s = self.settings
        ranked = sorted(((v.mean, w) for w, v in values.items() if v.n >= s.min_support), reverse=True)
        if len(ranked) < 2:
            return None
        (m1, w1), (m2, w2) = ranked[0], ranked[1]
        gap, se = m1 - m2, math.hypot(values[w1].se, values[w2].se)
        return (w1, gap, se) if gap > s.min_gap and gap > z * se else None

    def update(self, trajectories: list[Trajectory], policy: Policy, iteration: int, source: str = "rollout"
               ) -> dict[str, list[KnowledgeItem]]:
        """Fold one batch of feedback in; returns the items inserted, modified and erased."""
        s = self.settings
        self.feedback = self.feedback + trajectories if s.pool else list(trajectories)
        values = action_values(self.feedback, policy.action_words, s.gamma, s.n_step)
        texts = texts_by_situation(trajectories)
        prefs = preferences(policy, {k: spread(v, s.max_examples) for k, v in texts.items()}, s.preference_margin)
        changes: dict[str, list[KnowledgeItem]] = {"insert": [], "modify": [], "retain": [], "erase": []}
        for situation, by_action in sorted(values.items()):
            held = self.items.get(situation)
            found = self.best(by_action, s.z if held is None else s.erase_z)
            if found is None and held is not None and s.reinstate_z is not None:
                found = self.best(by_action, s.reinstate_z)
                if found is not None and not any(e.situation == situation and e.action == found[0]
                                                 for e in self.erased):
                    found = None  # only an action held before comes back on the smaller margin
            if found is None or situation not in texts:
                continue
            action, gap, _ = found
            if held is not None:
                if held.action == action:
                    continue
                changes["erase"].append(self.items.pop(situation))
                self.erased.append(held)
            preferred = prefs.get(situation)
            kind = "retain" if preferred == action else "insert" if preferred is None and held is None else "modify"
            item = KnowledgeItem(
                situation=situation, action=action, value_gap=gap,
                support=sum(v.n for v in by_action.values()), kind=kind, source=source, iteration=iteration,
                values={w: {"mean": v.mean, "se": v.se, "n": v.n} for w, v in by_action.items()},
                examples=spread(texts[situation], s.max_examples),
            )
            self.items[situation] = item
            changes[kind].append(item)
        return changes

    def reset_feedback(self) -> None:
        """Estimate from new feedback only from now on (the task changed); the items held stay."""
        self.feedback = []

    def erase(self, situation: str) -> KnowledgeItem:
        """Remove an item by hand (e.g. the environment changed); the next injection drops its effect."""
        item = self.items.pop(situation)
        self.erased.append(item)
        return item
