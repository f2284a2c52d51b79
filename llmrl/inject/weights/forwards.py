"""Forward passes over prompts cached up to their subject, and the hooks that read and shift the residual stream.

Rows are right-padded on top of a KV cache; the part of every prompt before
the subject is run once (their common prefix, the system prompt, once for all
rows), so each optimisation step runs only the few tokens from the subject on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from llmrl.inject.weights.layout import Layout
from llmrl.inject.weights.prompts import SubjectPrompt


class Stop(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


@dataclass
class Past:
    """KV cache of right-padded rows; ``length`` is where each row's real tokens end."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    length: torch.Tensor


def forward(model: PreTrainedModel, rows: list[list[int]], past: Past | None, pad: int,
             keep: int | torch.Tensor = 1) -> tuple[torch.Tensor | None, Past]:
    """Run right-padded ``rows`` on top of ``past``: logits at columns ``keep`` (None if a hook
    stopped the pass) and the extended past."""
    n, width = len(rows), max(len(r) for r in rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    live = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        live[i, :len(r)] = 1
    start = past.length if past else torch.zeros(n, dtype=torch.long)
    mask = torch.cat([past.mask, live], dim=1) if past else live
    cache = DynamicCache(past.kv) if past else DynamicCache()
    dev = model.device
    try:
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                       position_ids=(start[:, None] + torch.arange(width)).to(dev),
                       cache=cache, use_cache=True, logits_to_keep=keep).logits
    except Stop:
        logits = None
    kv = [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized]
    return logits, Past(kv, mask, start + live.sum(1))


def encode(model: PreTrainedModel, rows: list[list[int]], pad: int) -> Past:
    """KV cache of ``rows``, running their longest common prefix (the system prompt) only once."""
    n, shared = len(rows), 0
    while all(len(r) > shared and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    past = None
    if shared:
        _, one = forward(model, [rows[0][:shared]], None, pad)
        past = Past([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in one.kv],
                     one.mask.expand(n, -1), one.length.expand(n))
    rest = [r[shared:] for r in rows]
    if any(rest):
        _, past = forward(model, rest, past, pad)
    assert past is not None  # every row has tokens before its subject
    return past


@dataclass
class Rows:
    """Prompts of several items, cached up to the subject; ``live`` runs from the subject on."""

    prompts: list[SubjectPrompt]
    owner: torch.Tensor
    past: Past

    @property
    def live(self) -> list[list[int]]:
        return [p.ids[p.subject:] for p in self.prompts]

    def columns(self) -> tuple[int, torch.Tensor]:
        """First column and the range of live columns whose logits any row needs."""
        lo = min(p.first for p in self.prompts)
        hi = max(p.first + max(len(p.answer), 1) - 1 for p in self.prompts)
        return lo, torch.arange(lo, hi + 1)


@contextmanager
def hooked(*handles: torch.utils.hooks.RemovableHandle) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _raise_stop(*_: object) -> None:
    raise Stop


def cache_rows(model: PreTrainedModel, prompts: list[SubjectPrompt], owner: list[int], pad: int,
          stop: nn.Module | None = None) -> Rows:
    """Cache every prompt up to its subject; ``stop`` ends the pass after that block (keys only)."""
    handles = [stop.register_forward_hook(_raise_stop)] if stop is not None else []
    with torch.no_grad(), hooked(*handles):
        past = encode(model, [p.ids[:p.subject] for p in prompts], pad)
    return Rows(prompts, torch.tensor(owner), past)


def subject_states(model: PreTrainedModel, layout: Layout, rows: Rows, layer: int, z_layer: int,
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (input of ``layer``'s down projection) and residuals (output of block ``z_layer``) at each
    row's subject token, per row; the pass stops after ``z_layer``."""
    got: dict[str, torch.Tensor] = {}

    def key(_: nn.Module, args: tuple) -> None:
        got["k"] = args[0][:, 0].double().cpu()

    def residual(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["z"] = out[:, 0].double().cpu()
        raise Stop

    with torch.no_grad(), hooked(layout.projections[layer].register_forward_pre_hook(key),
                                  layout.blocks[z_layer].register_forward_hook(residual)):
        forward(model, [[p.ids[p.subject]] for p in rows.prompts], rows.past, pad)
    return got["k"], got["z"]


def block_output(model: PreTrainedModel, block: nn.Module, rows: Rows, pad: int) -> torch.Tensor:
    """Output of ``block`` at the live tokens of ``rows``; the pass stops there."""
    got: dict[str, torch.Tensor] = {}

    def record(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["h"] = out.detach()
        raise Stop

    with torch.no_grad(), hooked(block.register_forward_hook(record)):
        forward(model, rows.live, rows.past, pad)
    return got["h"]


@contextmanager
def replay(blocks: list[nn.Module], output: torch.Tensor) -> Iterator[None]:
    """Within, ``blocks[:-1]`` pass their input through and ``blocks[-1]`` returns ``output``.

    The forwards are replaced on the instances, so the blocks keep their
    attributes (decoder loops read some) and any wrapper's own ``forward`` is
    put back afterwards.
    """
    saved = [block.__dict__.get("forward") for block in blocks]
    for block in blocks[:-1]:
        block.forward = _pass_through
    blocks[-1].forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        for block, forward in zip(blocks, saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def _pass_through(*args: object, **kwargs: object) -> object:
    return args[0] if args else kwargs["hidden_states"]


def mean_per_item(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of row ``values`` per owning item."""
    counts = torch.zeros(n, dtype=values.dtype).index_add_(0, owner, torch.ones_like(owner, dtype=values.dtype))
    sums = torch.zeros((n, *values.shape[1:]), dtype=values.dtype).index_add_(0, owner, values)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def answer_logp(model: PreTrainedModel, rows: Rows, pad: int) -> torch.Tensor:
    """Mean log-probability per answer token, per row, with whatever hooks are active."""
    lo, cols = rows.columns()
    logits, _ = forward(model, rows.live, rows.past, pad, keep=cols.to(model.device))
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return torch.stack([torch.stack([logp[i, p.first - lo + t, a] for t, a in enumerate(p.answer)]).mean()
                        for i, p in enumerate(rows.prompts)])


def next_logp(model: PreTrainedModel, rows: Rows, pad: int) -> torch.Tensor:
    """Next-token log-distribution at the end of each (essence) row."""
    lo, cols = rows.columns()
    logits, _ = forward(model, rows.live, rows.past, pad, keep=cols.to(model.device))
    index = torch.tensor([p.first - lo for p in rows.prompts], device=logits.device)
    return torch.log_softmax(logits.float()[torch.arange(len(index), device=logits.device), index], dim=-1).cpu()


@contextmanager
def frozen(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode and no parameter gradients while editing; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)
