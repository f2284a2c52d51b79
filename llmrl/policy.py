"""The language-model policy: observation texts in, action indices out.

``score`` mode (GLAM / TWOSOME style) reads the probability of every action
word from the model's log-softmax, normalised by tokens or words as TWOSOME
compares (Tan et al., 2024, found per-word best). ``generate`` mode (BALROG
style) lets the model answer freely and parses the action; an unparsable
answer falls back to the card's default action and is counted.

Speed comes from four things together: the shared prompt prefix is run once
and its KV cache reused; all environments of a step go through one batched
forward (suffixes are left-padded *after* the prefix, so every row ends in the
same column); only the last position's logits are computed; and a bounded
decision cache keyed by the observation text skips the model for texts it has
already scored.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from llmrl.engine import Batch, Engine
from llmrl.errors import UsageError
from llmrl.models import LoadedModel
from llmrl.prompts import Prompt, render

NORMALIZATIONS = ("word", "token", "sum")
MODES = ("score", "generate")
_COT_CUE = "\nAction:"


@dataclass
class PolicyStats:
    """Counters a run reports; ``flops`` counts the model arithmetic on uncached tokens."""

    decisions: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    tokens: int = 0
    flops: float = 0.0
    model_seconds: float = 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.decisions if self.decisions else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.decisions if self.decisions else 0.0


class Policy:
    """Chooses one action index (into the card's action words) per observation text.

    A policy that reads the raw observations instead (PPO) sets
    ``reads_observations`` and implements :meth:`act_on_observations`; rollouts
    and evaluation treat it the same otherwise. ``observation`` names which of
    the card's observations it reads (None: the environment's own).
    """

    action_words: list[str]
    stats: PolicyStats
    reads_observations: bool = False
    observation: str | None = None

    def act(self, texts: list[str], slots: list[int] | None = None) -> list[int]:
        raise NotImplementedError

    def act_on_observations(self, observations: list, slots: list[int]) -> list[int]:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Restart the policy's own random draws, if it samples in evaluation; evaluation calls it, so that
        its seed fixes the actions as well as the episodes. Greedy policies have nothing to restart."""


class RandomPolicy(Policy):
    """Uniform over the action words; the floor every other policy must beat.

    Its draws follow ``seed`` and do not restart on :meth:`reseed`: a random run is one
    evaluation, so its run seed already fixes its actions (and the recorded runs keep them).
    """

    def __init__(self, action_words: list[str], seed: int = 0):
        self.action_words = list(action_words)
        self.stats = PolicyStats()
        self._gen = torch.Generator().manual_seed(seed)

    def act(self, texts: list[str], slots: list[int] | None = None) -> list[int]:
        self.stats.decisions += len(texts)
        return torch.randint(len(self.action_words), (len(texts),), generator=self._gen).tolist()


class LLMPolicy(Policy):
    """A causal LM acting through a :class:`Prompt`.

    ``temperature`` 0 is greedy; above 0 the action is sampled from the
    softmax of the normalised scores divided by it.
    """

    def __init__(self, lm: LoadedModel, prompt: Prompt, mode: str = "score", normalization: str = "word",
                 temperature: float = 0.0, seed: int = 0, default_action: int = 0,
                 decision_cache_size: int = 65536, max_batch: int = 32, max_new_tokens: int = 24,
                 invalid_feedback: bool = True):
        if mode not in MODES:
            raise UsageError(f"bad mode {mode!r}; choose one of {', '.join(MODES)}")
        if normalization not in NORMALIZATIONS:
            raise UsageError(f"bad normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {temperature}")
        if max_batch < 1 or max_new_tokens < 1 or decision_cache_size < 0:
            raise UsageError("max_batch and max_new_tokens must be >= 1, decision_cache_size >= 0")
        self.lm, self.mode, self.normalization = lm, mode, normalization
        self.temperature, self.default_action = temperature, default_action
        self.max_batch, self.max_new_tokens = max_batch, max_new_tokens
        self.invalid_feedback = invalid_feedback
        self.decision_cache_size = decision_cache_size
        self.stats = PolicyStats()
        self._gen = torch.Generator().manual_seed(seed)
        self._invalid: set[int] = set()
        #: Rewrites observation texts before they are scored (the context strategy adds retrieved cases).
        self.transform: Callable[[list[str]], list[str]] | None = None
        #: Generate mode: the raw answers of the last call, for inspection and logs.
        self.last_answers: list[str] = []
        cfg = lm.model.config
        self._flops_per_token = 2.0 * sum(
            p.numel() for n, p in lm.model.named_parameters() if "embed" not in n and "lm_head" not in n)
        self._attn_flops_per_ctx = 4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * getattr(
            cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        self._head_flops = 2.0 * cfg.hidden_size * cfg.vocab_size
        gen_eos = lm.model.generation_config.eos_token_id
        self._eos = {lm.tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
        self.engine = Engine(lm.model, lm.tokenizer.pad_token_id, observer=self._count)
        self.set_prompt(prompt)

    # -- prompt and prefix ---------------------------------------------------------------------

    def set_prompt(self, prompt: Prompt) -> None:
        """Change the prompt (e.g. new injected context); the prefix is recomputed lazily."""
        self.prompt = prompt
        self.action_words = list(prompt.action_words)
        self.rendered = rendered = render(prompt, self.lm.tokenizer)
        self._prefix_text, self._suffix = rendered.prefix, rendered.suffix
        self._lead = " " if prompt.reasoning else rendered.lead
        tok = self.lm.tokenizer
        self._prefix_ids = tok(rendered.prefix, add_special_tokens=False, return_tensors="pt").input_ids
        self._action_ids = [tok(self._lead + w, add_special_tokens=False).input_ids for w in self.action_words]
        self._word_counts = [len(w.split()) for w in self.action_words]
        self._cue_ids = tok(_COT_CUE, add_special_tokens=False).input_ids
        self._prefix_cache: Batch | None = None
        self._decisions: OrderedDict[str, torch.Tensor] = OrderedDict()

    @contextmanager
    def using_prompt(self, prompt: Prompt) -> Iterator[LLMPolicy]:
        """Act through ``prompt`` for the body, then return to the prompt before with its caches as they were
        (the model must not change meanwhile): a detour, such as scoring under a reworded prompt, costs the
        policy's own prompt nothing."""
        original, prefix, decisions = self.prompt, self._prefix_cache, self._decisions
        self.set_prompt(prompt)
        try:
            yield self
        finally:
            self.set_prompt(original)
            self._prefix_cache, self._decisions = prefix, decisions

    def reseed(self, seed: int) -> None:
        """Sampling (``temperature`` > 0) restarts from ``seed``; greedy picks draw nothing."""
        self._gen.manual_seed(seed)

    def invalidate(self) -> None:
        """Forget the prefix KV cache and the decision cache: call after the model's weights change."""
        self._prefix_cache = None
        self._decisions.clear()

    def decision_prompt(self, text: str) -> str:
        """The whole prompt the model reads before answering for observation ``text``."""
        return self._prefix_text + text + self._suffix

    def answer_text(self, word: str) -> str:
        """The continuation scored for action ``word`` right after :meth:`decision_prompt`."""
        return self._lead + word

    @property
    def prefix_tokens(self) -> int:
        return self._prefix_ids.shape[1]

    def _count(self, rows: int, length: int, context: int, keep: int, seconds: float) -> None:
        """The engine's report of one forward: time, tokens and the arithmetic on them."""
        self.stats.model_seconds += seconds
        self.stats.tokens += rows * length
        self.stats.flops += rows * length * (self._flops_per_token + self._attn_flops_per_ctx * context)
        self.stats.flops += rows * keep * self._head_flops

    def _prefix(self) -> Batch:
        if self._prefix_cache is None:
            with torch.inference_mode():
                _, self._prefix_cache = self.engine.run(None, self._prefix_ids)
        return self._prefix_cache

    # -- batched forward passes ----------------------------------------------------------------

    def _start(self, rows: list[list[int]]) -> tuple[Batch, torch.Tensor]:
        """Run suffix rows on top of the shared prefix; returns the batch and the last logits."""
        last, batch = self.engine.answer(self._prefix(), rows)
        return batch, last.cpu()

    def _action_scores(self, batch: Batch, last: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of every action word, normalised, as a [rows, actions] tensor."""
        total = self.engine.action_logprobs(batch, torch.log_softmax(last, dim=-1), self._action_ids).cpu()
        if self.normalization == "token":
            total = total / torch.tensor([len(a) for a in self._action_ids], dtype=total.dtype)
        elif self.normalization == "word":
            total = total / torch.tensor(self._word_counts, dtype=total.dtype)
        return total

    def _decode(self, batch: Batch, last: torch.Tensor, stop: str) -> tuple[list[str], Batch]:
        """Greedy (or sampled) decoding of up to ``max_new_tokens``, stopping at ``stop`` or EOS; the answers
        and the batch they end in."""
        tok = self.lm.tokenizer
        n = last.shape[0]
        out: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)
        for step in range(self.max_new_tokens):
            nxt = self._pick(last)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    if t in self._eos:
                        done[i] = True
                    else:
                        out[i].append(t)
                        done[i] = stop in tok.decode(out[i])
            if bool(done.all()) or step == self.max_new_tokens - 1:
                break
            logits, batch = self.engine.run(batch, nxt.unsqueeze(1), keep=1, live=~done.unsqueeze(1))
            last = logits[:, -1].float().cpu()
        return [tok.decode(o) for o in out], batch

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self._gen).squeeze(1)

    # -- public API ----------------------------------------------------------------------------

    def scores(self, texts: list[str], cached: bool = True) -> torch.Tensor:
        """Normalised action scores [len(texts), actions], through the decision cache.

        ``cached=False`` scores afresh in batches of exactly these texts, in order, and neither reads nor
        fills the cache: two states of a model compared this way see identical batches, which matters in
        low precision, where a text's scores move with the shape of the batch it is scored in.
        """
        if self.transform is not None:
            texts = self.transform(texts)
        if not cached:
            return torch.cat([self._score_uncached(texts[s:s + self.max_batch])
                              for s in range(0, len(texts), self.max_batch)])
        result: list[torch.Tensor | None] = [self._decisions.get(t) for t in texts]
        for t in texts:
            if t in self._decisions:
                self._decisions.move_to_end(t)
        self.stats.cache_hits += sum(r is not None for r in result)
        missing = list(dict.fromkeys(t for t, r in zip(texts, result) if r is None))
        fresh = {}
        for start in range(0, len(missing), self.max_batch):
            chunk = missing[start:start + self.max_batch]
            fresh.update(zip(chunk, self._score_uncached(chunk)))
        for t, s in fresh.items():
            self._remember(t, s)
        return torch.stack([r if r is not None else fresh[t] for t, r in zip(texts, result)])

    def _remember(self, text: str, score: torch.Tensor) -> None:
        if self.decision_cache_size == 0:
            return
        self._decisions[text] = score
        while len(self._decisions) > self.decision_cache_size:
            self._decisions.popitem(last=False)

    def suffix_ids(self, text: str) -> list[int]:
        """Token ids a decision runs on top of the cached prefix."""
        return self.lm.tokenizer(text + self._suffix, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def _score_uncached(self, texts: list[str]) -> torch.Tensor:
        batch, last = self._start([self.suffix_ids(t) for t in texts])
        if self.prompt.reasoning:
            _, batch = self._decode(batch, last, stop=_COT_CUE.strip())
            logits, batch = self.engine.run(batch, torch.tensor(self._cue_ids).expand(len(texts), -1), keep=1)
            last = logits[:, -1].float().cpu()
        return self._action_scores(batch, last)

    def act(self, texts: list[str], slots: list[int] | None = None) -> list[int]:
        """One action per text; ``slots`` name the environments (for generate-mode feedback)."""
        self.stats.decisions += len(texts)
        if self.mode == "generate":
            return self._act_generate(texts, slots or list(range(len(texts))))
        return self._pick(self.scores(texts)).tolist()

    def parse(self, answer: str) -> int | None:
        """The action an answer names: after 'Action:' if present, else the first word that matches."""
        words = sorted(range(len(self.action_words)), key=lambda i: -len(self.action_words[i]))
        lowered = answer.lower()
        tail = re.split(r"action\s*[:=]", lowered)
        for text in ([tail[-1]] if len(tail) > 1 else []) + [lowered]:
            hits = [(m.start(), i) for i in words
                    for m in [re.search(rf"\b{re.escape(self.action_words[i].lower())}\b", text)] if m]
            if hits:
                return min(hits)[1]
        return None

    @torch.inference_mode()
    def _act_generate(self, texts: list[str], slots: list[int]) -> list[int]:
        note = " (Your last answer was not a valid action.)"
        if self.transform is not None:
            texts = self.transform(texts)
        shown = [t + note if self.invalid_feedback and s in self._invalid else t for t, s in zip(texts, slots)]
        self.last_answers = []
        for start in range(0, len(shown), self.max_batch):
            chunk = shown[start:start + self.max_batch]
            batch, last = self._start([self.suffix_ids(t) for t in chunk])
            self.last_answers += self._decode(batch, last, stop="\n")[0]
        actions = [self.parse(answer) for answer in self.last_answers]
        chosen = []
        for a, s in zip(actions, slots):
            if a is None:
                self.stats.fallbacks += 1
                self._invalid.add(s)
                chosen.append(self.default_action)
            else:
                self._invalid.discard(s)
                chosen.append(a)
        return chosen

