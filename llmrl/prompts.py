"""Prompts: what the policy's model reads before each decision.

A prompt is split where the observation goes. Everything before it (the task
instructions, injected knowledge, few-shot turns) is the *prefix*, shared by
every decision and computed once; the observation text and the template's
closing tokens are the per-step *suffix*; the action word follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import PreTrainedTokenizerBase

from llmrl.cards import Card

_SLOT = "\x00OBSERVATION\x00"
_ANSWER = "\x00ANSWER\x00"


@dataclass
class Prompt:
    """The parts of a prompt that do not change between steps."""

    instructions: str
    action_words: list[str]
    #: Extra system text: an expert hint, rendered rules, ... (kept in the cached prefix).
    context: str = ""
    #: Few-shot turns as (observation text, answer).
    shots: list[tuple[str, str]] = field(default_factory=list)
    #: Ask for a short rationale before the action (chain-of-thought).
    reasoning: bool = False
    #: ``reworded`` phrases the same prompt differently: the generalization metric's second test.
    style: Literal["default", "reworded"] = "default"

    def system_text(self) -> str:
        words = ", ".join(self.action_words)
        reworded = self.style == "reworded"
        parts = [("Task: " if reworded else "") + self.instructions.strip()]
        if self.context:
            parts.append(self.context.strip())
        if self.reasoning:
            parts.append(f"First think in one short sentence, then write 'Action:' and one of: {words}.")
        elif reworded:
            parts.append(f"Reply with exactly one action from this list: {words}.")
        else:
            parts.append(f"Answer with one of: {words}.")
        return "\n".join(parts)

    @property
    def observation_lead(self) -> str:
        return "Current observation: " if self.style == "reworded" else ""


def card_prompt(card: Card, context: str = "", shots: list[tuple[str, str]] | None = None,
                reasoning: bool = False) -> Prompt:
    return Prompt(card.instructions, card.action_words, context, list(shots or []), reasoning)


@dataclass(frozen=True)
class Rendered:
    """A prompt as strings: ``prefix + observation + suffix + lead + answer``."""

    prefix: str
    suffix: str
    #: Text put before the action word ("" after a chat turn opens, " " after "Action:").
    lead: str
    #: What follows an answer up to the next observation: ends one turn, opens the next.
    between: str

    def turn(self, text: str, answer: str) -> str:
        """One finished (observation, answer) exchange, to place where an observation goes."""
        return text + self.suffix + self.lead + answer + self.between


def render(prompt: Prompt, tokenizer: PreTrainedTokenizerBase) -> Rendered:
    """Render with the tokenizer's chat template, or a plain layout without one."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": prompt.system_text()}]
        for text, answer in prompt.shots:
            messages += [{"role": "user", "content": prompt.observation_lead + text},
                         {"role": "assistant", "content": answer}]
        # a sentinel exchange before the real slot shows what separates an answer from the next observation
        user = {"role": "user", "content": prompt.observation_lead + _SLOT}
        messages += [user, {"role": "assistant", "content": _ANSWER}, user]
        full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, exchange, suffix = full.split(_SLOT)
        return Rendered(prefix, suffix, "", exchange.split(_ANSWER)[1])
    lead = f"Observation: {prompt.observation_lead}"
    shots = "".join(f"{lead}{t}\nAction: {a}\n\n" for t, a in prompt.shots)
    return Rendered(f"{prompt.system_text()}\n\n{shots}{lead}", "\nAction:", " ", "\n\n" + lead)
