"""What a stream carries from stage to stage: an editing learner, or PPO trained on.

An agent learns one iteration at a time (``learn``) and exposes its current
``policy`` for scoring; the stream (:mod:`llmrl.continual.stream`) does the
rest. :class:`EditingAgent` is one language model, knowledge base and
injector (a :class:`~llmrl.learner.Learner`); :class:`PPOAgent` is one SB3 PPO
learner per card whose training continues on each of its card's stages: the
classic catastrophic-forgetting reference where stages share a card, and the
per-stage reference where they do not.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from llmrl.cards import Card
from llmrl.config import LoopConfig
from llmrl.folders import atomic_write
from llmrl.inject import Injector
from llmrl.knowledge import Extraction, KnowledgeBase, KnowledgeItem
from llmrl.learner import JOINT, Learner
from llmrl.phases import STREAM_PHASES, PhaseClock
from llmrl.policy import Policy

KINDS = ("insert", "modify", "retain", "erase")
#: An item chosen on fewer of its examples than this is not held: its edit did not take, or a later one undid it.
HELD_BELOW = 0.5


class EditingAgent:
    """Language-model policies, one per card of the stream, on one model, edited by one learner."""

    def __init__(self, stages: list[LoopConfig], cards: list[Card], injector: Injector | None, accumulate: str,
                 out: Path, clock: PhaseClock | None = None):
        """``stages`` and ``cards`` side by side; a card's knowledge base takes its first stage's settings.
        ``clock`` gets the learner's phases and the locality probe's (``locality``)."""
        from llmrl.loop import base_policy
        from llmrl.metrics import LocalityProbe
        from llmrl.models import load_model

        first = stages[0]
        torch.manual_seed(first.seed)
        self.lm = load_model(first.model, first.device, first.dtype)
        atomic_write(out / "runtime.json", json.dumps(self.lm.runtime, indent=2))
        self.tasks: dict[str, tuple[Any, KnowledgeBase]] = {}
        for stage, card in zip(stages, cards):
            if card.key not in self.tasks:
                extraction = Extraction(**{f.name: getattr(stage, f.name) for f in fields(Extraction)})
                self.tasks[card.key] = (base_policy(stage, card, self.lm), KnowledgeBase(extraction))
        self.probe = LocalityProbe.for_card(self.lm, cards[0], first.locality_prompts,
                                            measured=injector is not None and injector.edits_parameters) \
            if first.locality else None
        self.clock = clock or PhaseClock(STREAM_PHASES)
        self.learner = Learner(self.tasks, injector, first, accumulate, self.clock)
        self.model, self.runtime = self.lm.name, self.lm.runtime
        self.changes = dict.fromkeys(KINDS, 0)
        self.card = cards[0]
        #: Whether the last ``learn`` changed a policy (an edit was made); if not, every score stands.
        self.changed = False
        #: Whether an edit through one card's policy can change another card's: parameters are shared, prompts
        #: are each card's own.
        self.reaches_every_card = injector is not None and injector.edits_parameters

    def policy_for(self, card: Card) -> Policy:
        return self.tasks[card.key][0]

    def begin(self, card: Card, variant: str | None, reset_feedback: bool) -> None:
        kb = self.tasks[card.key][1]
        self.card, self.changes, self.steps = card, dict.fromkeys(KINDS, 0), 0
        #: The items the card held when the stage began, and the stage's steps until each was revised.
        self.held = {situation: item.action for situation, item in kb.items.items()}
        self.revised: dict[str, int] = {}
        if reset_feedback:
            kb.reset_feedback()

    def learn(self, card: Card, variant: str | None, it: int, steps: int) -> int:
        lesson = self.learner.learn(card, variant, it, steps)
        self.changed = lesson.edited
        self.steps += lesson.env_steps
        for kind, items in lesson.changes.items():
            self.changes[kind] += len(items)
        for item in lesson.changes["erase"]:
            if item.situation in self.held:
                self.revised.setdefault(item.situation, self.steps)
        return lesson.env_steps

    def stage_info(self) -> dict[str, Any]:
        """The stage's knowledge changes, the items held (on its card and on all), whether each card's items
        still hold, and locality."""
        info: dict[str, Any] = {"items": len(self.tasks[self.card.key][1].items),
                                "items_held": sum(len(kb.items) for _, kb in self.tasks.values()),
                                **{f"items_{k}": v for k, v in self.changes.items()},
                                # items held from before the stage that its feedback contradicted, and the
                                # stage's environment steps until each was erased or replaced
                                "held_at_start": len(self.held), "revised": len(self.revised),
                                "steps_to_revise": sorted(self.revised.values())}
        with self.clock.phase("evaluate"):
            info.update(self._holding())
        if self.probe:
            with self.clock.phase("locality"):
                info.update(self.probe.measure() if self.learner.model_edited else self.probe.unchanged())
        return info

    def _holding(self) -> dict[str, Any]:
        """Per card holding items, the share of its items' examples on which its policy chooses the item's
        action (``reliability``), and the items chosen on fewer than :data:`HELD_BELOW` of theirs
        (``items_not_held``): the returns cannot say whether an item is missing from the knowledge or its
        edit did not take, or a later edit on another card undid it."""
        shares: dict[str, float] = {}
        not_held: list[dict[str, Any]] = []
        for key, (policy, kb) in self.tasks.items():
            pairs = [(t, item) for item in kb.items.values() for t in item.examples]
            if not pairs:
                continue
            picks = policy.scores([t for t, _ in pairs]).argmax(-1).tolist()
            hits: dict[str, list[bool]] = {}
            for k, (_, item) in zip(picks, pairs):
                hits.setdefault(item.situation, []).append(policy.action_words[k] == item.action)
            shares[key] = sum(map(sum, hits.values())) / len(pairs)
            not_held += [{"card": key, "situation": s, "action": kb.items[s].action, "reliability": sum(h) / len(h)}
                         for s, h in hits.items() if sum(h) / len(h) < HELD_BELOW]
        return {"reliability": shares, "items_not_held": not_held}

    def joint(self) -> bool | None:
        """Make the joint upper bound: every card's final items injected at once on the untouched model.

        Returns False where the edit in force already is that (``rebuild``), None without an injector.
        """
        if self.learner.injector is None:
            return None
        if self.learner.accumulate == "rebuild":
            return False
        self.learner.rebuild()
        return True

    @property
    def replayed(self) -> int:
        return self.learner.replayed

    def state(self) -> dict[str, Any]:
        """What :mod:`llmrl.continual.checkpoint` keeps: each card's items held and erased, and the edits in
        force, oldest first, each item with its card and whether it is the very item its card holds."""
        def held(card: str, item: KnowledgeItem) -> bool:
            return self.tasks[card][1].items.get(item.situation) is item

        def card_of(key: str, item: KnowledgeItem) -> str:  # a joint edit's items are several cards'
            return key if key != JOINT else next(k for k in self.tasks if held(k, item))

        return {"knowledge": {k: {"items": [i.to_json() for i in kb.items.values()],
                                  "erased": [i.to_json() for i in kb.erased]} for k, (_, kb) in self.tasks.items()},
                "edits": [{"card": key, "items": [{"card": card_of(key, i), "held": held(card_of(key, i), i),
                                                   "item": i.to_json()} for i in edit.items]}
                          for key, edit in self.learner.edits],
                "replayed": self.learner.replayed}

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` kept on the freshly loaded model: the knowledge, then the edits again."""
        for key, (_, kb) in self.tasks.items():
            saved = state["knowledge"].get(key, {"items": [], "erased": []})
            kb.items = {i["situation"]: KnowledgeItem(**i) for i in saved["items"]}
            kb.erased = [KnowledgeItem(**i) for i in saved["erased"]]
        edits = []
        for edit in state["edits"]:
            items = [(i["card"], self.tasks[i["card"]][1].items[i["item"]["situation"]] if i["held"]
                      else KnowledgeItem(**i["item"])) for i in edit["items"]]
            edits.append((edit["card"], items))
        self.learner.replay(edits)
        self.learner.replayed = state["replayed"]

    def finish(self, out: Path) -> None:
        """``items.json``: the items held at the end and those erased, each with its card."""
        def listed(card: str, items: Any) -> list[dict]:
            return [{"card": card, **i.to_json()} for i in items]

        atomic_write(out / "items.json", json.dumps(
            {"items": [x for k, (_, kb) in self.tasks.items() for x in listed(k, kb.items.values())],
             "erased": [x for k, (_, kb) in self.tasks.items() for x in listed(k, kb.erased)]}, indent=2))


class PPOAgent:
    """One PPO learner per card, each trained on through its card's stages, with the card's RL Zoo settings.

    Stages of one card and its variants (the flip stream) share one learner:
    its network, optimiser, step counter and observation statistics carry on
    across them, which makes it the classic catastrophic-forgetting reference.
    A card's observations mean nothing to another card's network, so a stream
    across cards (the control stream) gives each card a fresh learner, made
    the first time the card is played or scored: the per-stage reference.
    """

    def __init__(self, seed: int, device: str, out: Path, clock: PhaseClock | None = None):
        """``clock`` gets the seconds of training (``train``)."""
        self.seed, self.out, self.clock = seed, out, clock or PhaseClock(STREAM_PHASES)
        self.device = "cpu" if device == "auto" else device
        self.learners: dict[str, Any] = {}  # card key -> SB3 PPO model
        self.hps: dict[str, Any] = {}
        self.vecs: dict[str, Any] = {}
        self.model, self.runtime, self.replayed = "ppo", None, 0
        self.card: Card | None = None
        self.changed = False
        self.reaches_every_card = False  # each card trains a learner of its own

    def _environments(self, card: Card, variant: str | None) -> Any:
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize

        from llmrl.baselines.ppo import PPOHyperparameters, load_hyperparameters, training_env
        from llmrl.config import build

        if card.key not in self.hps:
            self.hps[card.key] = build(PPOHyperparameters, load_hyperparameters(card.key, None),
                                       source="PPO hyper-parameters")
        hp = self.hps[card.key]
        vec = make_vec_env(lambda: card.make_env(variant), n_envs=hp.n_envs, seed=self.seed,
                           wrapper_class=training_env, wrapper_kwargs={"card": card, "atari": hp.atari_wrapper})
        if hp.normalize:
            previous = self.vecs.get(card.key)
            vec = VecNormalize(vec, gamma=hp.gamma)
            if isinstance(previous, VecNormalize):
                vec.obs_rms, vec.ret_rms = previous.obs_rms, previous.ret_rms
        return vec

    def _train_on(self, card: Card, variant: str | None) -> None:
        """Point the card's learner (made here the first time) at fresh environments of ``variant``."""
        from stable_baselines3 import PPO

        vec = self._environments(card, variant)
        ppo = self.learners.get(card.key)
        if ppo is None:
            hp = self.hps[card.key]
            self.learners[card.key] = PPO(hp.policy, vec, seed=self.seed, device=self.device, verbose=0,
                                          tensorboard_log=str(self.out / "tensorboard"), **hp.ppo_kwargs())
        else:
            ppo.set_env(vec)  # SB3 refuses another observation or action space here
        if card.key in self.vecs:
            self.vecs[card.key].close()
        self.vecs[card.key] = vec

    def begin(self, card: Card, variant: str | None, reset_feedback: bool) -> None:
        self._train_on(card, variant)
        self.card = card

    def learn(self, card: Card, variant: str | None, it: int, steps: int) -> int:
        ppo = self.learners[card.key]
        self.changed = True  # training always moves the network
        before = ppo.num_timesteps
        with self.clock.phase("train"):
            ppo.learn(steps, reset_num_timesteps=False)
        return ppo.num_timesteps - before

    def policy_for(self, card: Card) -> Policy:
        from llmrl.baselines.ppo import ObsNormalization, PPOPolicy

        if card.key not in self.learners:  # a card not played yet: its untrained learner
            self._train_on(card, None)
        ppo = self.learners[card.key]
        vec = ppo.get_vec_normalize_env()
        return PPOPolicy(card.key, ppo.policy, ObsNormalization.of(vec) if vec else None,
                         sample=self.hps[card.key].sample_actions)

    def stage_info(self) -> dict[str, Any]:
        """The steps the stage's learner has trained, over every stage of its card."""
        assert self.card is not None
        return {"ppo_steps": int(self.learners[self.card.key].num_timesteps)}

    def finish(self, out: Path) -> None:
        for vec in self.vecs.values():
            vec.close()
