"""The one batched language-model engine: rows of tokens run on top of a shared KV cache.

Everything llmrl asks of a causal LM goes through here: the policy's action
scores and generated answers, the adapter's training objective (the same
scores, with gradients) and the weights injector's forward passes (prompts
cached up to their subject). So what the adapter is trained on is exactly the
score the policy acts on.

A :class:`Batch` is a KV cache of some rows, the attention mask over the tokens
it holds and the position each row continues at. :meth:`Engine.run` appends one
block of tokens to every row, padded on the left (every row then ends in the
same column, so the last column holds every row's next-token logits) or on
the right (every row starts in the same column), and returns the logits of the
columns asked for. It never changes the batch it is given: a cached prefix can
be continued many times.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from transformers import DynamicCache, PreTrainedModel

#: Called after every forward with (rows, new tokens per row, tokens attended to, logit columns, seconds).
Observer = Callable[[int, int, int, int, float], None]


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


@dataclass(frozen=True)
class Batch:
    """KV cache of ``rows`` rows: per layer (keys, values), the mask of real tokens, each row's next position."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    mask: torch.Tensor
    next_pos: torch.Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def expand(self, n: int) -> Batch:
        """A one-row batch as ``n`` rows, without copying the cache."""
        assert self.rows == 1, "only a one-row batch expands"
        return Batch(tuple((k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.kv),
                     self.mask.expand(n, -1), self.next_pos.expand(n))

    def repeat_interleave(self, m: int) -> Batch:
        """Every row ``m`` times in a row (row i becomes rows i*m .. i*m+m-1)."""
        return Batch(tuple((k.repeat_interleave(m, dim=0), v.repeat_interleave(m, dim=0)) for k, v in self.kv),
                     self.mask.repeat_interleave(m, dim=0), self.next_pos.repeat_interleave(m, dim=0))


def contiguous_head(model: PreTrainedModel) -> None:
    """Hand the output layer a contiguous input when no gradient is taken (once per model).

    A causal LM slices the last columns of its hidden states before the output
    layer (``logits_to_keep``), a strided view. ``torch.matmul`` folds a 3-D
    input into one matrix product only when the weight requires grad or the
    view is contiguous; otherwise it expands the vocabulary-sized weight per
    row for a batched product, which made every forward of a frozen model (an
    adapter attached, ``requires_grad_(False)``) about 2.5 times slower on
    the CPU. A one-row slice counts as contiguous but keeps its strides, so
    the input is copied into fresh ones. The copy costs a few rows of hidden
    state, and the logits are the same bit for bit. Training forwards are
    left alone: the two products' gradients differ in the last bits, and an
    adapter trained again must be the one a run recorded.
    """
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_llmrl_contiguous", False):
        head.register_forward_pre_hook(
            lambda _, args: None if torch.is_grad_enabled() or not args
            else (args[0].clone(memory_format=torch.contiguous_format), *args[1:]))
        head._llmrl_contiguous = True


class Engine:
    """Batched forwards of ``model``; ``pad`` fills the padding (masked, so any id does)."""

    def __init__(self, model: PreTrainedModel, pad: int, observer: Observer | None = None):
        self.model, self.pad, self.observer = model, pad, observer
        contiguous_head(model)
        #: A one-row batch every run from nothing continues (prefix tuning's virtual tokens); None: none.
        self.start: Batch | None = None
        #: The state every forward of this engine runs in (a routed adapter switched on); None: the model's own.
        self.route: Callable[[], AbstractContextManager] | None = None

    def run(self, batch: Batch | None, rows: list[list[int]] | torch.Tensor, align: Literal["left", "right"] = "left",
            keep: int | torch.Tensor = 1, live: torch.Tensor | None = None) -> tuple[torch.Tensor | None, Batch]:
        """Append ``rows`` to ``batch`` (None: from nothing, or from :attr:`start`); the logits of the last
        ``keep`` columns (or of the columns a tensor names), None if a hook raised :class:`StopForward`, and
        the longer batch.

        ``rows`` are token lists padded to one width on ``align``'s side, or an id tensor with a
        ``live`` mask of its real tokens.
        """
        if isinstance(rows, torch.Tensor):
            ids = rows
            live = torch.ones_like(ids, dtype=torch.bool) if live is None else live
        else:
            ids, live = self._pad(rows, align)
        n, width = ids.shape
        if batch is None and self.start is not None:
            batch = self.start.expand(n)
        live = live.long()
        start = batch.next_pos if batch is not None else torch.zeros(n, dtype=torch.long)
        mask = torch.cat([batch.mask, live], dim=1) if batch is not None else live
        pos = start.unsqueeze(1) + torch.cumsum(live, dim=1) - 1
        cache = DynamicCache(batch.kv) if batch is not None else DynamicCache()
        dev = self.model.device
        t0 = time.perf_counter()
        try:
            with self.route() if self.route is not None else nullcontext():
                logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                    position_ids=pos.clamp_min(0).to(dev), cache=cache, use_cache=True,
                                    logits_to_keep=keep).logits
        except StopForward:
            logits = None
        if self.observer is not None:
            columns = keep if isinstance(keep, int) else len(keep)
            self.observer(n, width, mask.shape[1], columns, time.perf_counter() - t0)
        kv = tuple((layer.keys, layer.values) for layer in cache.layers if layer.is_initialized)
        return logits, Batch(kv, mask, start + live.sum(1))

    def _pad(self, rows: list[list[int]], align: str) -> tuple[torch.Tensor, torch.Tensor]:
        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        live = torch.zeros((n, width), dtype=torch.bool)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if align == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            live[i, cols] = True
        return ids, live

    def encode(self, rows: list[list[int]]) -> Batch:
        """KV cache of ``rows`` (right-padded), running their longest common prefix only once."""
        shared = common_prefix(rows, len(min(rows, key=len)))
        batch = None
        if shared:
            _, one = self.run(None, [rows[0][:shared]])
            batch = one.expand(len(rows))
        rest = [r[shared:] for r in rows]
        if any(rest):
            _, batch = self.run(batch, rest, align="right", keep=1)
        assert batch is not None, "no tokens to encode"
        return batch

    def answer(self, prefix: Batch | None, suffixes: list[list[int]]) -> tuple[torch.Tensor, Batch]:
        """Next-token logits (float) where the answer starts, [rows, vocab], after each suffix run
        left-padded on the one-row ``prefix``; and the batch to continue from."""
        batch = prefix.expand(len(suffixes)) if prefix is not None else None
        logits, batch = self.run(batch, suffixes, align="left", keep=1)
        return logits[:, -1].float(), batch

    def action_logprobs(self, batch: Batch, first: torch.Tensor, actions: list[list[int]]) -> torch.Tensor:
        """Summed log-probability of every action's tokens, [rows, actions], where ``first`` (the
        next-token log-probabilities at the end of ``batch``) is the answer's first token.

        An action of several tokens continues from the batch, one copy of each row per such
        action. With gradients when the caller has them on.
        """
        n = batch.rows
        columns = [first[:, a[0]] for a in actions]
        multi = [i for i, a in enumerate(actions) if len(a) > 1]
        if multi:
            m, width = len(multi), max(len(actions[i]) for i in multi) - 1
            ids = torch.full((n * m, width), self.pad, dtype=torch.long)
            live = torch.zeros((n * m, width), dtype=torch.bool)
            for j, i in enumerate(multi):
                cont = actions[i][:-1]
                ids[j::m, :len(cont)] = torch.tensor(cont)
                live[j::m, :len(cont)] = True
            logits, _ = self.run(batch.repeat_interleave(m), ids, keep=width, live=live)
            cont_logp = torch.log_softmax(logits.float(), dim=-1).to(first.device)  # where the caller scores
            for j, i in enumerate(multi):
                targets = torch.tensor(actions[i][1:], device=cont_logp.device)
                rows = cont_logp[j::m, :len(targets)]
                columns[i] = columns[i] + rows.gather(2, targets.expand(n, -1).unsqueeze(2)).squeeze(2).sum(1)
        return torch.stack(columns, dim=1)


def common_prefix(rows: list[list[int]], limit: int) -> int:
    """Length of the tokens every row starts with, at most ``limit``."""
    shared = 0
    while shared < limit and all(len(r) > shared and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    return shared
