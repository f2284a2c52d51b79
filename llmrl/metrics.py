"""Edit metrics in RL terms: reliability, generalization, locality (and efficiency in the loop).

- reliability: of the observations an item was drawn from, the share where the
  policy's greedy action is now the item's action;
- generalization: the same on fresh observations of the items' situations, and
  on the source observations under a reworded prompt;
- locality: next-token KL(before || after) and top-1 agreement on unrelated
  prompts (the shipped set plus other environments' decision prompts).

"Before" is always measured on the untouched model when the probe is built,
never on an already edited one (EasyEdit's issue #643), and "after" runs on
the very model object the policy uses, so an edit that silently did not land
(their issues #363, #627) shows up as zero change.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import torch

from llmrl.cards import Card, all_cards
from llmrl.knowledge import KnowledgeItem, spread
from llmrl.models import LoadedModel
from llmrl.policy import LLMPolicy
from llmrl.prompts import card_prompt, render

LOCALITY_FILE = Path(__file__).with_name("data") / "locality_prompts.json"


def agreement(policy: LLMPolicy, pairs: list[tuple[str, str]]) -> float | None:
    """Share of (text, action word) pairs where the policy's greedy choice is that action."""
    if not pairs:
        return None
    scores = policy.scores([t for t, _ in pairs])
    hits = [policy.action_words[int(i)] == a for i, (_, a) in zip(scores.argmax(-1), pairs)]
    return sum(hits) / len(hits)


def reliability(policy: LLMPolicy, items: list[KnowledgeItem]) -> float | None:
    return agreement(policy, [(t, i.action) for i in items for t in i.examples])


def generalization(policy: LLMPolicy, items: list[KnowledgeItem], fresh: dict[str, list[str]]) -> float | None:
    """Mean of: fresh observations of the items' situations, and the examples under a reworded prompt."""
    seen = {t for i in items for t in i.examples}
    new = [(t, i.action) for i in items for t in fresh.get(i.situation, []) if t not in seen]
    parts = [agreement(policy, new)]
    with policy.using_prompt(replace(policy.prompt, style="reworded")):
        parts.append(reliability(policy, items))
    parts = [p for p in parts if p is not None]
    return sum(parts) / len(parts) if parts else None


def locality_prompts(split: str = "eval") -> list[str]:
    return json.loads(LOCALITY_FILE.read_text())[split]


def environment_prompts(tokenizer, exclude: str, per_card: int = 2, seed: int = 0) -> list[str]:
    """Zero-shot decision prompts of every other card: edits for one task should leave the others alone.

    Cards whose environment cannot be made here (an optional extra not
    installed) are left out with a warning; the probe's prompt count says so.
    """
    out, missing = [], []
    for key, card in sorted(all_cards().items()):
        if card.env_id == exclude or key == exclude:
            continue
        try:
            env = card.make_env()
        except (ImportError, gym.error.DependencyNotInstalled) as exc:
            missing.append(f"{key} ({exc})")
            continue
        rendered = render(card_prompt(card), tokenizer)
        for i in range(per_card):
            obs, _ = env.reset(seed=seed + i)
            out.append(rendered.prefix + card.text(obs, env)[0] + rendered.suffix)
        env.close()
    if missing:
        warnings.warn(f"locality probe leaves out {len(missing)} cards: " + "; ".join(missing), stacklevel=2)
    return out


class LocalityProbe:
    """Next-token distributions of unrelated prompts, taken once from the untouched model.

    With ``measured=False`` (edits that never change a parameter: context) no distribution is taken, and only
    :meth:`unchanged` may be asked for.
    """

    def __init__(self, lm: LoadedModel, prompts: list[str], batch_size: int = 32, measured: bool = True):
        self.lm, self.prompts, self.batch_size = lm, prompts, batch_size
        self.before = self._logprobs() if measured else None

    @classmethod
    def for_card(cls, lm: LoadedModel, card: Card, limit: int | None = None, measured: bool = True
                 ) -> "LocalityProbe":
        """The shipped held-out prompts plus the other cards' prompts; ``limit`` keeps that many, spread
        evenly over both (a cheaper, coarser probe for quick runs)."""
        prompts = locality_prompts("eval") + environment_prompts(lm.tokenizer, card.env_id)
        return cls(lm, spread(prompts, limit) if limit else prompts, measured=measured)

    def unchanged(self) -> dict[str, float]:
        """The measurement of the model the probe was built on, which is exact without a forward."""
        return {"locality_kl": 0.0, "locality_top1": 1.0, "locality_prompts": len(self.prompts)}

    @torch.inference_mode()
    def _logprobs(self) -> torch.Tensor:
        tok, rows = self.lm.tokenizer, []
        side = tok.padding_side
        tok.padding_side = "left"  # the next token follows the last real token in every row
        try:
            for start in range(0, len(self.prompts), self.batch_size):
                batch = tok(self.prompts[start:start + self.batch_size], add_special_tokens=False, padding=True,
                            return_tensors="pt").to(self.lm.device)
                pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.lm.model(**batch, position_ids=pos, logits_to_keep=1).logits[:, -1].float()
                rows.append(torch.log_softmax(logits, -1).cpu())
        finally:
            tok.padding_side = side
        return torch.cat(rows)

    def measure(self) -> dict[str, float]:
        """Mean KL(before || after) in nats and top-1 agreement, on the model as it is now."""
        if self.before is None:
            raise RuntimeError("this locality probe was built without measuring (measured=False)")
        after = self._logprobs()
        kl = (self.before.exp() * (self.before - after)).sum(-1)
        top1 = (self.before.argmax(-1) == after.argmax(-1)).float()
        return {"locality_kl": float(kl.mean()), "locality_top1": float(top1.mean()), "locality_prompts": len(kl)}
