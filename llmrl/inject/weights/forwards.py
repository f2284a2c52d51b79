"""Forward passes over prompts cached up to their subject, and the hooks that read and shift the residual stream.

Rows run right-padded on the :class:`~llmrl.engine.Engine`; the part of every
prompt before the subject is cached once (their common prefix, the system
prompt, once for all rows), so each optimisation step runs only the few tokens
from the subject on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from llmrl.engine import Batch, Engine, StopForward
from llmrl.inject.weights.layout import Layout
from llmrl.inject.weights.prompts import SubjectPrompt


@dataclass
class Rows:
    """Prompts of several items, cached up to the subject; ``live`` runs from the subject on."""

    prompts: list[SubjectPrompt]
    owner: torch.Tensor
    past: Batch

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
    raise StopForward


def cache_rows(engine: Engine, prompts: list[SubjectPrompt], owner: list[int], stop: nn.Module | None = None
               ) -> Rows:
    """Cache every prompt up to its subject; ``stop`` ends the pass after that block (keys only)."""
    handles = [stop.register_forward_hook(_raise_stop)] if stop is not None else []
    with torch.no_grad(), hooked(*handles):
        past = engine.encode([p.ids[:p.subject] for p in prompts])
    return Rows(prompts, torch.tensor(owner), past)


def subject_states(engine: Engine, layout: Layout, rows: Rows, layer: int, z_layer: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (input of ``layer``'s down projection) and residuals (output of block ``z_layer``) at each
    row's subject token, per row; the pass stops after ``z_layer``."""
    got: dict[str, torch.Tensor] = {}

    def key(_: nn.Module, args: tuple) -> None:
        got["k"] = args[0][:, 0].double().cpu()

    def residual(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["z"] = out[:, 0].double().cpu()
        raise StopForward

    with torch.no_grad(), hooked(layout.projections[layer].register_forward_pre_hook(key),
                                 layout.blocks[z_layer].register_forward_hook(residual)):
        engine.run(rows.past, [[p.ids[p.subject]] for p in rows.prompts], align="right")
    return got["k"], got["z"]


def block_output(engine: Engine, block: nn.Module, rows: Rows) -> torch.Tensor:
    """Output of ``block`` at the live tokens of ``rows``; the pass stops there."""
    got: dict[str, torch.Tensor] = {}

    def record(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["h"] = out.detach()
        raise StopForward

    with torch.no_grad(), hooked(block.register_forward_hook(record)):
        engine.run(rows.past, rows.live, align="right")
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


def answer_logp(engine: Engine, rows: Rows) -> torch.Tensor:
    """Mean log-probability per answer token, per row, with whatever hooks are active."""
    lo, cols = rows.columns()
    logits, _ = engine.run(rows.past, rows.live, align="right", keep=cols.to(engine.model.device))
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return torch.stack([torch.stack([logp[i, p.first - lo + t, a] for t, a in enumerate(p.answer)]).mean()
                        for i, p in enumerate(rows.prompts)])


def next_logp(engine: Engine, rows: Rows) -> torch.Tensor:
    """Next-token log-distribution at the end of each (essence) row."""
    lo, cols = rows.columns()
    logits, _ = engine.run(rows.past, rows.live, align="right", keep=cols.to(engine.model.device))
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
