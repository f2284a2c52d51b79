"""FT-L: constrained fine-tuning of one MLP down projection, the locate-then-edit field's baseline.

ROME (Meng et al., NeurIPS 2022) and MEMIT compare against fine-tuning the
layer they would edit, with the change of every weight bounded in L∞ norm
(Zhu et al., 2020, "Modifying memories in transformer models"). Here: Adam
steps on the negative log-likelihood of each item's action answer after its
decision prompts (the policy's own prompts, run through the engine with the
shared prefix once per step); only the down projection of one layer moves.

The change is trained as a float32 tensor beside the weight (a forward hook
adds ``x ΔWᵀ``), clamped to ``[-ε, ε]`` after every step, and written into the
weight once at the end: in bf16 a weight cannot hold steps of 1e-4 on values
near 0.02, the float32 delta can. The caller keeps the original weight for undo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from llmrl.engine import Engine
from llmrl.inject.adapter.objective import Encoded, action_logprobs, balanced_batches, encode, row_losses
from llmrl.inject.weights.layout import Layout
from llmrl.knowledge import KnowledgeItem
from llmrl.policy import LLMPolicy


@dataclass
class _Task:
    enc: Encoded
    batches: Iterator[list[tuple[int, int]]]
    #: The largest NLL of this task's last batch.
    last: float = float("inf")


def finetune(engine: Engine, layout: Layout, layer: int, pairs: list[tuple[LLMPolicy, list[KnowledgeItem]]],
             passes: int, lr: float, bound: float, batch_size: int, stop_nll: float, seed: int,
             max_steps: int) -> dict:
    """Fine-tune ``layout.projections[layer]`` on the items within ``bound`` of its weights; write the change.

    ``passes`` over the items in all (steps of ``batch_size`` example prompts, the policies' items in
    turn) or ``max_steps`` steps, whichever is fewer, stopping early once a step's rows all have an NLL
    below ``stop_nll``.
    """
    module = layout.projections[layer]
    weight = module.weight
    out_features, in_features = (weight.shape[1], weight.shape[0]) if layout.transposed else weight.shape
    delta = torch.zeros(out_features, in_features, dtype=torch.float32, device=weight.device, requires_grad=True)

    def hook(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + F.linear(args[0].float(), delta).to(output.dtype)

    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for policy, items in pairs:
        enc = encode(policy, items)
        tasks.append(_Task(enc, balanced_batches([len(s) for s in enc.suffixes], batch_size, gen)))
    rows = sum(len(s) for t in tasks for s in t.enc.suffixes)
    steps = min(max_steps, passes * max(1, -(-rows // batch_size)))
    optimiser = torch.optim.Adam([delta], lr=lr)
    handle = module.register_forward_hook(hook)
    done = 0
    try:
        for step in range(steps):
            task = tasks[step % len(tasks)]
            batch = next(task.batches)
            logprobs, _ = action_logprobs(engine, task.enc, [task.enc.suffixes[i][e] for i, e in batch])
            targets = torch.tensor([task.enc.targets[i] for i, _ in batch], device=logprobs.device)
            loss = row_losses(logprobs, targets, task.enc, "lm")
            optimiser.zero_grad()
            loss.mean().backward()
            optimiser.step()
            with torch.no_grad():
                delta.clamp_(-bound, bound)
            task.last, done = float(loss.detach().max()), step + 1
            if all(t.last < stop_nll for t in tasks):
                break
    finally:
        handle.remove()
    layout.add(layer, delta.detach())
    return {"layer": layer, "steps": done, "max_nll": max(t.last for t in tasks),
            "largest_change": float(delta.detach().abs().max())}

