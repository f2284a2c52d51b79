"""Baseline policies: random and the prompt-engineering family.

Each prompt baseline is the same :class:`~llmrl.policy.LLMPolicy` with a
different prompt, so that differences in return come from the prompt alone:

- ``zero-shot``: the task instructions and the action words;
- ``few-shot``: plus k demonstrations (from the card, or the best episodes of a
  trajectory file);
- ``chain-of-thought``: the model writes a one-sentence rationale, then the
  action words are scored after it;
- ``expert-hint``: plus the card's expert hint.
"""

from __future__ import annotations

from pathlib import Path

from llmrl.cards import Card
from llmrl.errors import UsageError
from llmrl.models import LoadedModel
from llmrl.policy import LLMPolicy, Policy, RandomPolicy
from llmrl.prompts import Prompt, card_prompt
from llmrl.rollout import load_trajectories
from llmrl.strategies import BASELINES


def few_shot_examples(card: Card, k: int, trajectories: Path | None = None) -> list[tuple[str, str]]:
    """k (observation, action word) pairs: the card's own, or steps of the best episodes in a file.

    From a file, episodes are taken best return first and steps are spread
    evenly through each, so the examples cover the episode rather than its start.
    """
    if k < 1:
        raise UsageError(f"few-shot needs k >= 1, got {k}")
    if trajectories is None:
        if not card.demonstrations:
            raise UsageError(f"card {card.key} has no demonstrations; pass a trajectory file")
        return list(card.demonstrations[:k])
    episodes = sorted(load_trajectories(trajectories, card.action_words), key=lambda t: -t.ret)
    examples: list[tuple[str, str]] = []
    for episode in episodes:
        want = min(k - len(examples), episode.length)
        picks = [episode.steps[i * episode.length // want] for i in range(want)] if want else []
        examples += [(s.text, card.action_words[s.action]) for s in picks]
        if len(examples) >= k:
            break
    if not examples:
        raise UsageError(f"{trajectories} holds no steps")
    return examples


def baseline_prompt(name: str, card: Card, k: int = 3, trajectories: Path | None = None) -> Prompt:
    if name == "zero-shot":
        return card_prompt(card)
    if name == "few-shot":
        return card_prompt(card, shots=few_shot_examples(card, k, trajectories))
    if name == "chain-of-thought":
        return card_prompt(card, reasoning=True)
    if name == "expert-hint":
        if not card.hint:
            raise UsageError(f"card {card.key} has no expert hint")
        return card_prompt(card, context=f"Hint: {card.hint}")
    raise UsageError(f"unknown policy {name!r}; choose one of {', '.join(BASELINES)}")


def make_baseline(name: str, card: Card, lm: LoadedModel | None, seed: int = 0, k: int = 3,
                  trajectories: Path | None = None, **policy_kwargs) -> Policy:
    """Build baseline ``name``; ``policy_kwargs`` go to :class:`LLMPolicy`."""
    if name == "random":
        return RandomPolicy(card.action_words, seed)
    prompt = baseline_prompt(name, card, k, trajectories)
    if lm is None:
        raise UsageError(f"policy {name} needs a model")
    default = card.action_words.index(card.default_action_word)
    return LLMPolicy(lm, prompt, seed=seed, default_action=default, **policy_kwargs)
