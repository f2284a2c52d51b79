"""Context strategy (recognition phase): knowledge as rules, demonstrations and retrieved cases.

Nothing in the model changes. Following IKE (in-context knowledge editing),
each item becomes a rule in the system prompt plus ``demos`` demonstrations:
finished exchanges of one of its source observations answered with the
preferred action. Rules and demonstrations sit in the shared prefix, so their
KV cache is computed once. Optionally (SERAC / ExpeL-style memory), each
observation is also preceded by up to ``k`` stored cases of its own
situation, by cosine similarity of the model's own mean-pooled hidden
states, the closest last: right before the observation, where a small
model attends most (Liu et al., DeeLIO 2022, found the nearest examples
placed next to the query work best). Everything stays within ``max_tokens``.

With ``rules: false`` the edit is retrieval alone (RAG, Lewis et al., NeurIPS
2020): no rules and no demonstrations, every example of every item stored as
a case, ``k`` of them retrieved per observation. The prompt then grows with
``k``, not with the number of items, which is how a thousand items fit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace

import torch

from llmrl.cards import situation_of
from llmrl.inject import Edit
from llmrl.knowledge import KnowledgeItem
from llmrl.policy import LLMPolicy


def _tokens(policy: LLMPolicy, text: str) -> int:
    return len(policy.lm.tokenizer(text, add_special_tokens=False).input_ids)


def select(policy: LLMPolicy, items: list[KnowledgeItem], demos: int, budget: int
           ) -> tuple[list[KnowledgeItem], str, list[tuple[str, str]], int]:
    """Rules and demonstrations, strongest evidence first, cut to ``budget`` tokens.

    Returns the items kept, the rules block, the demonstrations and the tokens used.
    """
    header = "Rules learned from experience:"
    used, kept, lines, shots = _tokens(policy, header), [], [header], []
    for item in sorted(items, key=lambda i: -(i.value_gap * i.support)):
        line = f"- When {item.situation}: {item.action}."
        item_shots = [(text, item.action) for text in item.examples[:demos]]
        cost = _tokens(policy, "\n" + line) + sum(_tokens(policy, policy.rendered.turn(t, a)) for t, a in item_shots)
        if used + cost > budget:
            break
        kept.append(item)
        lines.append(line)
        shots += item_shots
        used += cost
    return kept, ("\n".join(lines) if kept else ""), shots, used


class CaseMemory:
    """Stored (observation, action) cases retrieved by key, then by hidden-state similarity.

    Cases are filed under their item's key, and an observation retrieves those of the most specific key
    that holds any: an item keyed by its very text (the capacity pool's observation items), else the
    situation its text ends with; a finer item is an exception to a coarser one, as in any rule system.
    No other item's cases reach it, so erasing an item takes all of its influence away. ``own``: whether an observation
    may retrieve a case of its very text (a lookup, as retrieval-only editing needs); rules and
    demonstrations already hold those otherwise. ``base``: an earlier memory whose cases this one keeps
    (an item of the same key replaces them), as a sequential edit stacks on the earlier ones.
    ``fill``: when fewer than ``k`` cases are found, show them again, in turn, until ``k`` are shown: a
    small model copies an answer far more often after several identical exchanges than after one
    (``scripts/copy_probe.py``).
    """

    def __init__(self, policy: LLMPolicy, items: list[KnowledgeItem], k: int, budget: int, layer: float,
                 own: bool = False, fill: bool = False, base: CaseMemory | None = None, cache_size: int = 65536,
                 batch_size: int = 64):
        self.policy, self.k, self.budget, self.own, self.batch_size = policy, k, budget, own, batch_size
        self.fill = fill
        self.layer = max(1, round(layer * policy.lm.model.config.num_hidden_layers))
        # on top of an earlier memory (sequential editing): its cases, an item of the same key replacing its own
        self.cases: dict[str, list[tuple[str, str]]] = {} if base is None else dict(base.cases)
        for key in {item.situation for item in items}:
            self.cases[key] = []
        for item in items:
            self.cases[item.situation].extend((text, item.action) for text in item.examples)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict() if base is None else base._embeddings
        self._cache_size = cache_size
        self._embed([t for cases in self.cases.values() for t, _ in cases])

    def _embed(self, texts: list[str]) -> None:
        """Mean-pooled hidden states at ``layer`` for texts not yet embedded (batched forwards)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._embeddings))
        lm = self.policy.lm
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            batch = lm.tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt").to(lm.device)
            with torch.inference_mode():
                hidden = lm.model(**batch, output_hidden_states=True).hidden_states[self.layer].float()
            mask = batch.attention_mask.unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).cpu()
            for text, vec in zip(chunk, pooled):
                self._embeddings[text] = vec
        while len(self._embeddings) > self._cache_size:
            self._embeddings.popitem(last=False)

    def retrieve(self, text: str) -> list[tuple[str, str]]:
        """Up to ``k`` cases filed under the text itself, else under its situation; most similar last."""
        cases: list[tuple[str, str]] = []
        for key in (text, situation_of(text)):
            cases = [c for c in self.cases.get(key, []) if self.own or c[0] != text] if key else []
            if cases:
                break
        if len(cases) > 1:
            self._embed([text])
            sims = torch.stack([self._embeddings[t] for t, _ in cases]) @ self._embeddings[text]
            cases = [cases[i] for i in sims.argsort(descending=True)[: self.k].tolist()]
        if self.fill and cases:
            cases = [cases[i % len(cases)] for i in range(self.k)]
        return cases[::-1]

    def decorate(self, texts: list[str]) -> list[str]:
        """Put each text's retrieved cases before it as finished exchanges, within the token budget."""
        out = []
        for text in texts:
            turns = [self.policy.rendered.turn(case, action) for case, action in self.retrieve(text)]
            while turns and _tokens(self.policy, "".join(turns)) > self.budget:
                turns.pop(0)  # the least similar
            out.append("".join(turns) + text)
        return out


class ContextInjector:
    """Rules and demonstrations in the cached prefix, plus ``k`` retrieved cases per observation
    (``rules: false``: the retrieved cases alone)."""

    name = "context"
    edits_parameters = False

    def __init__(self, demos: int = 1, k: int = 0, max_tokens: int = 1024, embed_layer: float = 0.5,
                 rules: bool = True, fill: bool = False):
        if demos < 0 or k < 0 or max_tokens < 1 or not 0 < embed_layer <= 1:
            raise ValueError("demos >= 0, k >= 0, max_tokens >= 1 and 0 < embed_layer <= 1 are required")
        if not rules and k < 1:
            raise ValueError("retrieval alone (rules: false) needs k >= 1")
        self.demos, self.k, self.max_tokens, self.embed_layer = demos, k, max_tokens, embed_layer
        self.rules, self.fill = rules, fill

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        t0 = time.perf_counter()
        original_prompt, original_transform = policy.prompt, policy.transform
        if self.rules:
            kept, rules, shots, used = select(policy, items, self.demos, self.max_tokens)
        else:
            kept, rules, shots, used = list(items), "", [], 0
        context = "\n".join(p for p in (original_prompt.context, rules) if p)
        policy.set_prompt(replace(original_prompt, context=context, shots=original_prompt.shots + shots))
        if self.k:
            earlier = getattr(original_transform, "__self__", None)  # a memory in force: this edit stacks on it
            memory = CaseMemory(policy, kept, self.k, self.max_tokens - used, self.embed_layer, own=not self.rules,
                                fill=self.fill, base=earlier if isinstance(earlier, CaseMemory) else None)
            policy.transform = memory.decorate

        def undo() -> None:
            policy.set_prompt(original_prompt)
            policy.transform = original_transform

        return Edit("context", list(items), time.perf_counter() - t0, 0, undo,
                    info={"rules": len(kept) if self.rules else 0,
                          "cases": sum(len(i.examples) for i in kept) if self.k else 0,
                          "demonstrations": len(shots), "context_tokens": used, "k": self.k,
                          "prefix_tokens": policy.prefix_tokens})
