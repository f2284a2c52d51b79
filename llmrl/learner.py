"""Learning from one's own play: explore, fold the feedback into knowledge, inject it.

A :class:`Learner` is one policy, one knowledge base and one injector. Each
call of :meth:`Learner.learn` plays ``steps`` exploratory environment steps,
updates the knowledge base, and when the items changed replaces the edit in
force (undo it, inject every item now held). The editing loop
(:mod:`llmrl.loop`) runs one learner on one task; a continual stream
(:mod:`llmrl.continual`) carries one through a sequence of tasks.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmrl.cards import Card
from llmrl.config import LoopConfig
from llmrl.errors import UsageError
from llmrl.folders import atomic_write
from llmrl.inject import Edit, Injector
from llmrl.knowledge import KnowledgeBase, KnowledgeItem
from llmrl.phases import PhaseClock
from llmrl.policy import LLMPolicy, Policy, PolicyStats
from llmrl.rollout import Trajectory, rollout
from llmrl.strategies import ACCUMULATE, EDIT_STRATEGIES, injector_class


def make_injector(strategy: str, options: dict[str, Any], out: Path | None = None) -> Injector:
    """The injector of edit strategy ``strategy``, built from the config's ``strategy_options``.

    The adapter saves itself, and the weights injector the corpus of its statistics, under ``out``.
    """
    if strategy not in EDIT_STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose {', '.join(EDIT_STRATEGIES)}")
    if strategy in ("adapter", "weights") and out is not None:
        options.setdefault("save_dir", out / strategy)
    try:
        return injector_class(strategy)(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad strategy_options for {strategy}: {exc}") from exc


#: Injector options that say where files go rather than what the edit does.
LOCATIONS = ("save_dir", "corpus")


def injector_settings(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of the strategy's injector, defaults filled in (locations left out).

    A run keeps these (``injector.json``) so that its edit can be replayed as it was made, even after a
    release changes a default.
    """
    params = inspect.signature(injector_class(strategy)).parameters.values()
    full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty} | options
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items() if k not in LOCATIONS}


def keep_settings(out: Path, strategy: str, options: dict[str, Any]) -> None:
    """Write ``out/injector.json``: the strategy and its injector's every option (:func:`injector_settings`)."""
    atomic_write(out / "injector.json", json.dumps(
        {"strategy": strategy, "options": injector_settings(strategy, options)}, indent=2))


class Exploring(Policy):
    """Samples from the policy's action distribution at a temperature, with epsilon-random actions.

    With ``hold`` > 1, an environment slot keeps its sampled action for that
    many decisions before sampling again (and its texts are not scored meanwhile).
    """

    def __init__(self, policy: LLMPolicy, temperature: float, epsilon: float, seed: int, hold: int = 1):
        self.policy, self.temperature, self.epsilon, self.hold = policy, temperature, epsilon, hold
        self.action_words = policy.action_words
        self.stats = PolicyStats()
        self._gen = torch.Generator().manual_seed(seed)
        self._held: dict[int, tuple[int, int]] = {}  # slot -> (action, decisions left)

    def act(self, texts: list[str], slots: list[int] | None = None) -> list[int]:
        self.stats.decisions += len(texts)
        slots = list(range(len(texts))) if slots is None else slots
        fresh = [i for i, slot in enumerate(slots) if self._held.get(slot, (0, 0))[1] == 0]
        actions = [self._held[slot][0] if i not in fresh else -1 for i, slot in enumerate(slots)]
        if fresh:
            probs = torch.softmax(self.policy.scores([texts[i] for i in fresh]) / self.temperature, dim=-1)
            probs = (1 - self.epsilon) * probs + self.epsilon / probs.shape[1]
            for i, a in zip(fresh, torch.multinomial(probs, 1, generator=self._gen).squeeze(1).tolist()):
                actions[i] = a
                self._held[slots[i]] = (a, self.hold)
        for slot in slots:
            action, left = self._held[slot]
            self._held[slot] = (action, left - 1)
        return actions


@dataclass
class Lesson:
    """What one call of :meth:`Learner.learn` did."""

    feedback: list[Trajectory]
    env_steps: int
    #: Items inserted, modified, retained and erased.
    changes: dict[str, list[KnowledgeItem]]
    #: Whether the edit in force was replaced.
    edited: bool


#: The card key of an edit made of several cards' items.
JOINT = "*"


class Learner:
    """Policies, their knowledge bases and one injector (None: collect knowledge, inject nothing).

    ``tasks`` maps a card's key to the policy that plays it and the knowledge
    base of its items. A loop run has one; a stream across cards has one per
    card, every policy on the same model, so that an edit made through one
    card's policy (weights, an adapter) reaches them all. Exploration uses
    ``cfg``'s temperature, epsilon, hold and ``n_envs``; iteration ``it``
    plays from seeds derived from ``cfg.seed`` and ``it``, so no two
    iterations of a run share episodes. ``clock`` gets the seconds of its
    collect, knowledge and inject phases (:mod:`llmrl.phases`).

    ``accumulate`` says how a change of the knowledge reaches the policies:

    - ``rebuild``: undo every edit in force, inject every item held: one edit of all cards' items where the
      injector can make one (``inject_jointly``: adapter, weights), else one edit per card, stacked.
    - ``sequential``: the lifelong-editing setting (GRACE, WISE, AlphaEdit): edit on top of the earlier
      edits, with only the new items. An item whose situation got another action is overwritten by the
      new item's edit; an item erased with nothing in its place is taken out by undoing the edits back to
      the oldest one that wrote it and injecting again the items of those edits still held (the cost of an
      erase, reported as ``replayed`` items).
    """

    def __init__(self, tasks: dict[str, tuple[LLMPolicy, KnowledgeBase]], injector: Injector | None,
                 cfg: LoopConfig | None, accumulate: str = "rebuild", clock: PhaseClock | None = None):
        if accumulate not in ACCUMULATE:
            raise UsageError(f"unknown accumulate mode {accumulate!r}; choose {', '.join(ACCUMULATE)}")
        self.tasks, self.injector, self.cfg, self.accumulate = tasks, injector, cfg, accumulate
        self.clock = clock or PhaseClock()
        #: The edits in force, oldest first, each with the card whose policy made it.
        self.edits: list[tuple[str, Edit]] = []
        self.replayed = 0

    @property
    def edit(self) -> Edit | None:
        """The latest edit in force."""
        return self.edits[-1][1] if self.edits else None

    @property
    def model_edited(self) -> bool:
        """Whether an edit in force changed a parameter: without one (context edits only change prompts, and
        undoing is exact) the model is the untouched one, whose locality needs no measuring."""
        return any(e.params_touched for _, e in self.edits)

    def learn(self, card: Card, variant: str | None, it: int, steps: int) -> Lesson:
        cfg = self.cfg
        assert cfg is not None, "a learner made without a LoopConfig only edits (apply, rebuild, undo_to)"
        policy, kb = self.tasks[card.key]
        explorer = Exploring(policy, cfg.explore_temperature, cfg.epsilon, seed=cfg.seed * 7919 + it,
                             hold=cfg.explore_hold)
        with self.clock.phase("collect"):
            feedback = rollout(explorer, card, episodes=steps, seed=cfg.seed * 100_000 + it * 1_000,
                               n_envs=cfg.n_envs, variant=variant, step_budget=steps, clock=self.clock)
        with self.clock.phase("knowledge"):
            changes = kb.update(feedback, policy, it)
        edited = self.injector is not None and any(changes.values())
        if edited:
            with self.clock.phase("inject"):
                self.apply(card.key, changes)
        return Lesson(feedback, sum(t.length for t in feedback), changes, edited)

    def apply(self, key: str, changes: dict[str, list[KnowledgeItem]]) -> None:
        """Bring the edits in line with the knowledge bases after ``changes`` to card ``key``'s."""
        assert self.injector is not None
        if self.accumulate == "rebuild":
            self.rebuild()
            return
        todo: dict[str, dict[str, KnowledgeItem]] = {}  # card -> situation -> item, in injection order
        kb = self.tasks[key][1]
        orphans = {i.situation for i in changes["erase"]} - set(kb.items)
        # the edits that wrote them: none left when erasing another card's items undid them already
        wrote = [n for n, (k, e) in enumerate(self.edits) if k == key and orphans & {i.situation for i in e.items}]
        if wrote:
            oldest = wrote[0]
            for k, e in self.edits[oldest:]:
                held = self.tasks[k][1].items
                todo.setdefault(k, {}).update({i.situation: i for i in e.items if held.get(i.situation) is i})
            self.undo_to(oldest)
            self.replayed += sum(len(items) for items in todo.values())
        todo.setdefault(key, {}).update(
            {i.situation: i for kind in ("insert", "modify", "retain") for i in changes[kind]})
        self._inject(todo, joint=False)

    def rebuild(self) -> None:
        """Undo every edit and inject every item held: one edit of all cards' items where the injector can."""
        assert self.injector is not None
        self.undo_to(0)
        self._inject({k: dict(kb.items) for k, (_, kb) in self.tasks.items()}, joint=True)

    def replay(self, edits: list[tuple[str, list[tuple[str, KnowledgeItem]]]]) -> None:
        """Make again, in order, edits that were in force: ``(card key or JOINT, [(card, item), ...])`` each.
        An injector's edit depends only on the model and the items, so this restores the edited model."""
        for key, items in edits:
            todo: dict[str, dict[str, KnowledgeItem]] = {}
            for card, item in items:
                todo.setdefault(card, {})[item.situation] = item
            self._inject(todo, joint=key == JOINT)

    def _inject(self, todo: dict[str, dict[str, KnowledgeItem]], joint: bool) -> None:
        todo = {k: items for k, items in todo.items() if items}
        jointly = getattr(self.injector, "inject_jointly", None)
        if joint and len(todo) > 1 and jointly is not None:
            # every card's items in one edit (MEMIT solves for all of them at once)
            self.edits.append((JOINT, jointly([(self.tasks[k][0], list(i.values())) for k, i in todo.items()])))
        else:
            for k, items in todo.items():
                self.edits.append((k, self.injector.inject(self.tasks[k][0], list(items.values()))))
        self._invalidate()

    def undo_to(self, n: int) -> None:
        """Undo the edits after the first ``n``, newest first: the policies are as they were after edit ``n``."""
        while len(self.edits) > n:
            self.edits.pop()[1].undo()
        self._invalidate()

    def _invalidate(self) -> None:
        """Every policy's caches: an edit through one card's policy may have changed the shared model."""
        if len(self.tasks) > 1:
            for policy, _ in self.tasks.values():
                policy.invalidate()
