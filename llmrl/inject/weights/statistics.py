"""Key statistics C = E[k kᵀ] of the edited layers, from a corpus the model samples itself, cached.

No dataset download: the model answers a few generic requests, and that text
(plus the environment's own decision prompts) stands in for Wikipedia; one
bounded pass per model and layer, cached as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from llmrl.engine import Engine, StopForward
from llmrl.inject.weights.forwards import hooked
from llmrl.inject.weights.layout import Layout
from llmrl.models import LoadedModel

#: Generic requests the model answers to produce the statistics corpus.
SEED_PROMPTS = (
    "Tell me a short story about a lighthouse keeper.",
    "Explain how rain forms, step by step.",
    "What should I pack for a weekend hiking trip?",
    "Describe a busy market early in the morning.",
    "Write a few paragraphs about the history of railways.",
    "How does a computer store numbers?",
    "Give me advice for my first job interview.",
    "Explain the rules of chess to a beginner.",
    "Write a letter to a friend about your holiday.",
    "What is the difference between weather and climate?",
    "Describe how to cook a simple vegetable soup.",
    "Why do cats purr?",
)


def model_key(lm: LoadedModel, layout: Layout) -> str:
    """Folder name for a model's statistics: its name, config and a checksum of its weights.

    The down projections are left out of the checksum: they are what this
    strategy edits, and the statistics of the unedited model serve every later
    edit (as in MEMIT's sequential use), so an edit must not trigger a recount.
    """
    digest = hashlib.sha256(lm.name.encode())
    digest.update(json.dumps(lm.model.config.to_dict(), sort_keys=True, default=str).encode())
    edited = {id(p.weight) for p in layout.projections}
    for name, param in lm.model.named_parameters():
        if id(param) not in edited:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy())
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', lm.name).strip('-')[-60:]}-{digest.hexdigest()[:16]}"


def _chat(tokenizer: PreTrainedTokenizerBase, request: str) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                             add_generation_prompt=True)
    return request + "\n"


def sample_corpus(lm: LoadedModel, tokens: int, seed: int, length: int = 128, batch: int = 64) -> list[list[int]]:
    """About ``tokens`` new tokens the model samples as answers to :data:`SEED_PROMPTS` (prompts included).

    The model's own text stands in for Wikipedia: it needs no download and is
    by construction the distribution of keys the model produces.
    """
    tok, model = lm.tokenizer, lm.model
    seeds = [tok(_chat(tok, s), add_special_tokens=False).input_ids for s in SEED_PROMPTS]
    eos = model.generation_config.eos_token_id
    stops = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops), 0)
    corpus: list[list[int]] = []
    made, round_ = 0, 0
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        while made < tokens and round_ < math.ceil(tokens / batch):
            chunk = [seeds[(round_ * batch + j) % len(seeds)] for j in range(batch)]
            round_ += 1
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk])
            new = min(length, max(1, math.ceil((tokens - made) / batch)))
            out = model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), do_sample=True,
                                 temperature=1.0, top_p=0.95, max_new_tokens=new, pad_token_id=pad)
            for s, row in zip(chunk, out[:, width:].tolist()):
                ends = [i for i, t in enumerate(row) if t in stops]
                row = row[:ends[0] + 1] if ends else row
                corpus.append(s + row)
                made += len(row)
    return corpus


@dataclass
class Corpus:
    """Token sequences for the statistics pass; ``skip`` lists, per sequence, positions left out."""

    sequences: list[list[int]]
    skip: list[list[int]]

    def __add__(self, other: Corpus) -> Corpus:
        return Corpus(self.sequences + other.sequences, self.skip + other.skip)

    def save(self, path: Path) -> None:
        flat = [t for seq in self.sequences for t in seq]
        keep = [pos not in skipped for seq, skipped in zip(self.sequences, map(set, self.skip))
                for pos in range(len(seq))]
        write_tensors(path, {"ids": torch.tensor(flat, dtype=torch.int64),
                      "lengths": torch.tensor([len(s) for s in self.sequences], dtype=torch.int64),
                      "keep": torch.tensor(keep, dtype=torch.bool)}, {})

    @classmethod
    def load(cls, path: Path) -> Corpus:
        data = read_tensors(path)
        ids, keep = data["ids"].tolist(), data["keep"].tolist()
        sequences, skip, at = [], [], 0
        for n in data["lengths"].tolist():
            sequences.append(ids[at:at + n])
            skip.append([i for i in range(n) if not keep[at + i]])
            at += n
        return cls(sequences, skip)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write safetensors atomically: parallel runs may fill the same cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _batches(lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped by similar length, each group at most ``batch_tokens`` padded tokens (or one row)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) + 1) * lengths[i] > batch_tokens:
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def second_moments(engine: Engine, layout: Layout, layers: list[int], corpus: Corpus, batch_tokens: int = 4096
                   ) -> tuple[dict[int, torch.Tensor], int]:
    """E[k kᵀ] of the down-projection inputs at ``layers`` over ``corpus``, and the number of tokens.

    The corpus's skipped positions (the edited subjects) are left out: their
    old values are what an edit changes, not what it must keep. Each pass
    stops after the deepest layer needed.
    """
    sums = {layer: torch.zeros((layout.key_size, layout.key_size), dtype=torch.float64) for layer in layers}
    got: dict[int, torch.Tensor] = {}
    count, dev = 0, engine.model.device

    def capture(layer: int) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            got[layer] = args[0]
            if layer == layers[-1]:
                raise StopForward
        return hook

    handles = [layout.projections[layer].register_forward_pre_hook(capture(layer)) for layer in layers]
    with torch.no_grad(), hooked(*handles):
        for chunk in _batches([len(seq) for seq in corpus.sequences], batch_tokens):
            _, batch = engine.run(None, [corpus.sequences[i] for i in chunk], align="right")
            keep = batch.mask.bool()
            for row, i in enumerate(chunk):
                keep[row, corpus.skip[i]] = False
            count += int(keep.sum())
            for layer in layers:
                k = got[layer][keep.to(dev)].float()
                sums[layer] += (k.T @ k).double().cpu()
    return {layer: (s / max(count, 1)).float() for layer, s in sums.items()}, count
