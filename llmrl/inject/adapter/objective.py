"""What the adapter is trained on and the loss it is trained with.

:class:`Encoded` holds the items' decision prompts as token ids, split at the
prefix every prompt shares so a training step runs that prefix once.
The loss functions score actions exactly as the policy does (through the
:class:`~llmrl.engine.Engine`), so what the adapter learns is what the policy chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from llmrl.engine import Batch, Engine
from llmrl.inject.adapter.tuners import Tuner
from llmrl.knowledge import KnowledgeItem
from llmrl.policy import LLMPolicy


@dataclass
class Encoded:
    """The items as token ids: what every decision prompt shares, and what differs."""

    #: Tokens at the start of every decision prompt, run once per step.
    prefix: list[int]
    #: Per item, the rest of each example's decision prompt.
    suffixes: list[list[list[int]]]
    #: Tokens of every action word's answer, in the policy's action order.
    actions: list[list[int]]
    #: Per item, the index of its action.
    targets: list[int]
    #: What the policy divides each action's summed log-probability by.
    norms: torch.Tensor


def encode(policy: LLMPolicy, items: list[KnowledgeItem]) -> Encoded:
    """Tokenise the items' decision prompts and the policy's action answers.

    Answers are tokenised on their own, as the policy scores them. The shared
    prefix is measured on the token ids rather than assumed, and stops one
    token short of the shortest prompt so every row has a position to predict from.
    """
    words = policy.action_words
    unknown = sorted({i.action for i in items} - set(words))
    if unknown:
        raise ValueError(f"item actions {unknown} are not among the policy's action words {words}")
    tok = policy.lm.tokenizer
    prompts = [[tok(policy.decision_prompt(t), add_special_tokens=False).input_ids for t in item.examples]
               for item in items]
    flat = [p for rows in prompts for p in rows]
    shared = min(len(p) for p in flat) - 1
    for p in flat[1:]:
        shared = next((i for i, (a, b) in enumerate(zip(flat[0][:shared], p)) if a != b), shared)
    actions = [tok(policy.answer_text(w), add_special_tokens=False).input_ids for w in words]
    norms = {"word": [len(w.split()) for w in words], "token": [len(a) for a in actions],
             "sum": [1] * len(words)}[policy.normalization]
    return Encoded(flat[0][:shared], [[p[shared:] for p in rows] for rows in prompts], actions,
                   [words.index(i.action) for i in items], torch.tensor(norms, dtype=torch.float32))


def balanced_batches(counts: list[int], batch_size: int, gen: torch.Generator) -> Iterator[list[tuple[int, int]]]:
    """Endless batches of (item, example) that take the items in turn, so each counts the same.

    Within an item, examples come in shuffled passes, so all are seen equally often.
    """
    queues: list[list[int]] = [[] for _ in counts]
    turn = 0
    while True:
        batch = []
        for _ in range(batch_size):
            item = turn % len(counts)
            turn += 1
            if not queues[item]:
                queues[item] = torch.randperm(counts[item], generator=gen).tolist()
            batch.append((item, queues[item].pop()))
        yield batch


# -- the training objective ----------------------------------------------------------------


def action_logprobs(engine: Engine, enc: Encoded, suffixes: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of every action after each suffix, [rows, actions], and the answer
    position's next-token log-probabilities: the policy's own scoring (the engine's), with gradients."""
    last, batch = engine.answer(prefix_batch(engine, enc), suffixes)
    first = torch.log_softmax(last, -1)
    return engine.action_logprobs(batch, first, enc.actions), first


def lump_actions(logp: torch.Tensor, actions: list[list[int]]) -> torch.Tensor:
    """Log-probabilities with the actions' first tokens merged into one outcome, "some action"."""
    keep = torch.ones(logp.shape[-1], dtype=torch.bool, device=logp.device)
    keep[[a[0] for a in actions]] = False
    return torch.cat([logp[:, keep], torch.logsumexp(logp[:, ~keep], -1, keepdim=True)], dim=-1)


def kl_rows(ref: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """KL(ref || cur) along the last dimension, from log-probabilities."""
    return (ref.exp() * (ref - cur)).sum(-1)


def row_losses(logprobs: torch.Tensor, targets: torch.Tensor, enc: Encoded, objective: str) -> torch.Tensor:
    """Per-row loss: CE over the policy's normalised action scores (choice) or of the target's tokens (lm)."""
    if objective == "choice":
        return F.cross_entropy(logprobs / enc.norms.to(logprobs.device), targets, reduction="none")
    lengths = torch.tensor([len(a) for a in enc.actions], device=logprobs.device)
    return -logprobs.gather(1, targets.unsqueeze(1)).squeeze(1) / lengths[targets]


def choice_logprobs(scores: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """The policy's choice among the actions, as log-probabilities, from summed action log-probabilities."""
    return torch.log_softmax(scores.float() / enc.norms.to(scores.device), -1)


@dataclass
class Kept:
    """Earlier items of one policy that further training must not change: their choices before it."""

    enc: Encoded
    #: Per item, [examples, actions] log-probabilities of the choice before this edit.
    choices: list[torch.Tensor]
    batches: Iterator[list[tuple[int, int]]]


def locality_texts(prompts: list[str], tokenizer) -> list[str]:
    """The prompts as plain text and, with a chat template, also as a user turn awaiting the answer.

    The policy reads chat turns and answers right after them, so that is where
    an adapter would most easily change every task at once.
    """
    if not tokenizer.chat_template:
        return list(prompts)
    return list(prompts) + [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                          add_generation_prompt=True) for p in prompts]


def locality_kl(tuner: Tuner, seqs: list[list[int]], pad: int) -> torch.Tensor:
    """Mean next-token KL(frozen || adapted) over every real position of the token sequences."""
    model = tuner.model
    dev = next(model.parameters()).device
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=dev)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=dev)
    with torch.no_grad(), tuner.disabled():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    cur = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    return (kl_rows(ref, cur) * mask).sum() / mask.sum()



def prefix_batch(engine: Engine, enc: Encoded) -> Batch | None:
    """The shared prefix of every decision prompt, run once (with gradients when they are on)."""
    return engine.run(None, [enc.prefix])[1] if enc.prefix else None
