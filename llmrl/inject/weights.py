"""The ``weights`` strategy: closed-form edits of MLP weights (ROME, MEMIT), exactly undoable.

A knowledge item "in situation S, action A is better" is written into the MLP
down projections the way ROME (Meng et al., 2022) and MEMIT (Meng et al.,
2023) write facts:

- the **key** is the down projection's input at the last token of the
  subject (the situation phrase inside the decision prompt), averaged over the
  item's example observations, which differ in the numbers before the phrase;
- the **value** is a vector added to the residual stream there, found by a few
  Adam steps that make the action word likely after the prompt, with a KL term
  on a neutral sentence about the situation (ROME's "essence" prompt) and a
  norm limit;
- the **update** is closed form and weighted by the key second moments
  C = E[k kᵀ], so that other keys keep their values: ROME a rank-one change of
  one layer, one item at a time; MEMIT a least-squares change of a batch of
  items spread over a range of layers.

C comes from a small local corpus (text the model samples itself from a few
generic seed prompts, plus the environment's own prompts), in one bounded pass
cached as safetensors per model and layer: no dataset download, no 40-hour
statistics run.

On a CPU speed comes from splitting every prompt at the subject. The part
before it does not depend on the value vector, so its KV cache is computed once
(the shared system prompt once for all rows) and each optimisation step runs
only the few tokens from the subject to the answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from llmrl.errors import UsageError
from llmrl.inject import Edit
from llmrl.knowledge import KnowledgeItem
from llmrl.models import LoadedModel, cache_dir
from llmrl.policy import LLMPolicy

METHODS = ("rome", "memit")

#: Default layers as fractions of depth (0 = first block, 1 = last): for the 30-block default
#: model MEMIT edits blocks 9, 10, 12, 13 and 14 (rounding skips 11) and ROME block 12. On 32
#: Taxi items MEMIT at 0.3-0.5 beat 0.1-0.3 and 0.4-0.6 in reliability and locality
#: (scripts/bench_memit.py); for GPT-2 XL this lands near MEMIT's 13-17 and ROME's 17 of 48.
DEFAULT_LAYERS = {"rome": (0.4,), "memit": (0.3, 0.35, 0.4, 0.45, 0.5)}

#: MEMIT's λ per edited item (see WeightsInjector).
MOM2_WEIGHT_PER_ITEM = 500.0

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


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


# -- model layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a model keeps its blocks and their MLP down projections (the edited weights)."""

    blocks: list[nn.Module]
    projections: list[nn.Module]
    #: GPT-2's ``Conv1D`` stores the projection as [intermediate, hidden], the transpose of ``nn.Linear``.
    transposed: bool

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream (the projection's output)."""
        return self.projections[0].weight.shape[1 if self.transposed else 0]

    @property
    def key_size(self) -> int:
        """Width of the keys (the projection's input)."""
        return self.projections[0].weight.shape[0 if self.transposed else 1]

    def add(self, layer: int, delta: torch.Tensor) -> None:
        """Add ``delta`` ([hidden, intermediate], the ``nn.Linear`` orientation) to one projection."""
        weight = self.projections[layer].weight
        with torch.no_grad():
            weight.add_((delta.T if self.transposed else delta).to(weight))


def find_layout(model: nn.Module) -> Layout:
    """Llama layout (``model.layers[i].mlp.down_proj``) or GPT-2 layout (``transformer.h[i].mlp.c_proj``)."""
    for outer, inner, proj, kind, transposed in (("model", "layers", "down_proj", nn.Linear, False),
                                                 ("transformer", "h", "c_proj", Conv1D, True)):
        blocks = getattr(getattr(model, outer, None), inner, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and all(
                isinstance(getattr(getattr(b, "mlp", None), proj, None), kind) for b in blocks):
            return Layout(list(blocks), [getattr(b.mlp, proj) for b in blocks], transposed)
    raise UsageError(f"the weights strategy edits Llama-style (model.layers[i].mlp.down_proj) or GPT-2-style "
                     f"(transformer.h[i].mlp.c_proj) models; {type(model).__name__} is neither")


def resolve_layers(spec: Sequence[int | float] | None, depth: int, method: str) -> list[int]:
    """Layer indices from ints (negative counts from the end) or floats (fractions of depth)."""
    chosen = []
    for entry in DEFAULT_LAYERS[method] if spec is None else spec:
        if isinstance(entry, float):
            if not 0.0 <= entry <= 1.0:
                raise UsageError(f"layer fraction {entry} is outside [0, 1]")
            index = round(entry * (depth - 1))
        else:
            index = entry + depth if entry < 0 else entry
        if not 0 <= index < depth:
            raise UsageError(f"layer {entry} does not exist in a {depth}-layer model")
        chosen.append(index)
    layers = sorted(set(chosen))
    if not layers:
        raise UsageError("no layers to edit")
    if layers[-1] == depth - 1:
        raise UsageError(f"layer {layers[-1]} is the last block; the value vector needs a block after it "
                         "to reach the answer")
    if method == "rome" and len(layers) != 1:
        raise UsageError(f"ROME edits exactly one layer, got {layers}")
    return layers


# -- prompts and the subject ---------------------------------------------------------------------


def subject_position(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token of the last occurrence of ``subject``.

    The last occurrence, because the observation (and with it the situation)
    comes after anything the prompt's instructions may say about it.
    """
    start = text.rfind(subject) if subject else -1
    if start < 0:
        raise UsageError(f"subject {subject!r} does not occur in the prompt {text[-200:]!r}")
    if not tokenizer.is_fast:
        raise UsageError("the weights strategy needs a fast tokenizer (it reads the offsets mapping)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last = start + len(subject) - 1
    covering = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= last < b]
    return list(enc["input_ids"]), covering[-1]


@dataclass(frozen=True)
class _Prompt:
    """A prompt split at the subject, with the answer whose tokens it should predict."""

    #: The prompt's tokens, then the answer's tokens but the last (teacher forcing).
    ids: list[int]
    #: Index of the subject's last token.
    subject: int
    #: Answer tokens; empty for an essence prompt, where the next-token distribution is what counts.
    answer: tuple[int, ...]

    @property
    def first(self) -> int:
        """Column, counted from the subject, whose logits predict the first answer token (or the next token)."""
        return len(self.ids) - max(len(self.answer), 1) - self.subject


def _make_prompt(tokenizer: PreTrainedTokenizerBase, text: str, subject: str, answer: str | None) -> _Prompt:
    ids, index = subject_position(tokenizer, text, subject)
    if index == 0:
        raise UsageError(f"subject {subject!r} starts the prompt; it needs at least one token before it")
    answer_ids = tuple(tokenizer(answer, add_special_tokens=False).input_ids) if answer is not None else ()
    return _Prompt(ids + list(answer_ids[:-1]), index, answer_ids)


def _spread(values: Sequence[str], k: int) -> list[str]:
    """Up to ``k`` distinct values taken evenly through the sequence (examples differ most far apart)."""
    unique = list(dict.fromkeys(values))
    if len(unique) <= k:
        return unique
    return [unique[i * len(unique) // k] for i in range(k)]


# -- running the model on prompts split at the subject ----------------------------------------


@dataclass
class _Past:
    """KV cache of right-padded rows; ``length`` is where each row's real tokens end."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    length: torch.Tensor


def _forward(model: PreTrainedModel, rows: list[list[int]], past: _Past | None, pad: int,
             keep: int | torch.Tensor = 1) -> tuple[torch.Tensor | None, _Past]:
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
    except _Stop:
        logits = None
    kv = [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized]
    return logits, _Past(kv, mask, start + live.sum(1))


def _encode(model: PreTrainedModel, rows: list[list[int]], pad: int) -> _Past:
    """KV cache of ``rows``, running their longest common prefix (the system prompt) only once."""
    n, shared = len(rows), 0
    while all(len(r) > shared and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    past = None
    if shared:
        _, one = _forward(model, [rows[0][:shared]], None, pad)
        past = _Past([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in one.kv],
                     one.mask.expand(n, -1), one.length.expand(n))
    rest = [r[shared:] for r in rows]
    if any(rest):
        _, past = _forward(model, rest, past, pad)
    assert past is not None  # every row has tokens before its subject
    return past


@dataclass
class _Rows:
    """Prompts of several items, cached up to the subject; ``live`` runs from the subject on."""

    prompts: list[_Prompt]
    owner: torch.Tensor
    past: _Past

    @property
    def live(self) -> list[list[int]]:
        return [p.ids[p.subject:] for p in self.prompts]

    def columns(self) -> tuple[int, torch.Tensor]:
        """First column and the range of live columns whose logits any row needs."""
        lo = min(p.first for p in self.prompts)
        hi = max(p.first + max(len(p.answer), 1) - 1 for p in self.prompts)
        return lo, torch.arange(lo, hi + 1)


@contextmanager
def _hooked(*handles: torch.utils.hooks.RemovableHandle) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _raise_stop(*_: object) -> None:
    raise _Stop


def _rows(model: PreTrainedModel, prompts: list[_Prompt], owner: list[int], pad: int,
          stop: nn.Module | None = None) -> _Rows:
    """Cache every prompt up to its subject; ``stop`` ends the pass after that block (keys only)."""
    handles = [stop.register_forward_hook(_raise_stop)] if stop is not None else []
    with torch.no_grad(), _hooked(*handles):
        past = _encode(model, [p.ids[:p.subject] for p in prompts], pad)
    return _Rows(prompts, torch.tensor(owner), past)


def _subject_states(model: PreTrainedModel, layout: Layout, rows: _Rows, layer: int, z_layer: int,
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (input of ``layer``'s down projection) and residuals (output of block ``z_layer``) at each
    row's subject token, per row; the pass stops after ``z_layer``."""
    got: dict[str, torch.Tensor] = {}

    def key(_: nn.Module, args: tuple) -> None:
        got["k"] = args[0][:, 0].double().cpu()

    def residual(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["z"] = out[:, 0].double().cpu()
        raise _Stop

    with torch.no_grad(), _hooked(layout.projections[layer].register_forward_pre_hook(key),
                                  layout.blocks[z_layer].register_forward_hook(residual)):
        _forward(model, [[p.ids[p.subject]] for p in rows.prompts], rows.past, pad)
    return got["k"], got["z"]


def _block_output(model: PreTrainedModel, block: nn.Module, rows: _Rows, pad: int) -> torch.Tensor:
    """Output of ``block`` at the live tokens of ``rows``; the pass stops there."""
    got: dict[str, torch.Tensor] = {}

    def record(_: nn.Module, args: tuple, out: torch.Tensor) -> None:
        got["h"] = out.detach()
        raise _Stop

    with torch.no_grad(), _hooked(block.register_forward_hook(record)):
        _forward(model, rows.live, rows.past, pad)
    return got["h"]


@contextmanager
def _replay(blocks: list[nn.Module], output: torch.Tensor) -> Iterator[None]:
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


def _per_item(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of row ``values`` per owning item."""
    counts = torch.zeros(n, dtype=values.dtype).index_add_(0, owner, torch.ones_like(owner, dtype=values.dtype))
    sums = torch.zeros((n, *values.shape[1:]), dtype=values.dtype).index_add_(0, owner, values)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


def _answer_logp(model: PreTrainedModel, rows: _Rows, pad: int) -> torch.Tensor:
    """Mean log-probability per answer token, per row, with whatever hooks are active."""
    lo, cols = rows.columns()
    logits, _ = _forward(model, rows.live, rows.past, pad, keep=cols.to(model.device))
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return torch.stack([torch.stack([logp[i, p.first - lo + t, a] for t, a in enumerate(p.answer)]).mean()
                        for i, p in enumerate(rows.prompts)])


def _next_logp(model: PreTrainedModel, rows: _Rows, pad: int) -> torch.Tensor:
    """Next-token log-distribution at the end of each (essence) row."""
    lo, cols = rows.columns()
    logits, _ = _forward(model, rows.live, rows.past, pad, keep=cols.to(model.device))
    index = torch.tensor([p.first - lo for p in rows.prompts], device=logits.device)
    return torch.log_softmax(logits.float()[torch.arange(len(index), device=logits.device), index], dim=-1).cpu()


@contextmanager
def _frozen(model: PreTrainedModel) -> Iterator[None]:
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


# -- key statistics -----------------------------------------------------------------------------


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
        _write(path, {"ids": torch.tensor(flat, dtype=torch.int64),
                      "lengths": torch.tensor([len(s) for s in self.sequences], dtype=torch.int64),
                      "keep": torch.tensor(keep, dtype=torch.bool)}, {})

    @classmethod
    def load(cls, path: Path) -> Corpus:
        data = _read(path)
        ids, keep = data["ids"].tolist(), data["keep"].tolist()
        sequences, skip, at = [], [], 0
        for n in data["lengths"].tolist():
            sequences.append(ids[at:at + n])
            skip.append([i for i in range(n) if not keep[at + i]])
            at += n
        return cls(sequences, skip)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write safetensors atomically: parallel runs may fill the same cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, torch.Tensor]:
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


def second_moments(model: PreTrainedModel, layout: Layout, layers: list[int], corpus: Corpus, pad: int,
                   batch_tokens: int = 4096) -> tuple[dict[int, torch.Tensor], int]:
    """E[k kᵀ] of the down-projection inputs at ``layers`` over ``corpus``, and the number of tokens.

    The corpus's skipped positions (the edited subjects) are left out: their
    old values are what an edit changes, not what it must keep. Each pass
    stops after the deepest layer needed.
    """
    sums = {layer: torch.zeros((layout.key_size, layout.key_size), dtype=torch.float64) for layer in layers}
    got: dict[int, torch.Tensor] = {}
    count, dev = 0, model.device

    def capture(layer: int) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            got[layer] = args[0]
            if layer == layers[-1]:
                raise _Stop
        return hook

    handles = [layout.projections[layer].register_forward_pre_hook(capture(layer)) for layer in layers]
    with torch.no_grad(), _hooked(*handles):
        for chunk in _batches([len(seq) for seq in corpus.sequences], batch_tokens):
            width = max(len(corpus.sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            real = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, i in enumerate(chunk):
                ids[row, :len(corpus.sequences[i])] = torch.tensor(corpus.sequences[i])
                real[row, :len(corpus.sequences[i])] = True
            keep = real.clone()
            for row, i in enumerate(chunk):
                keep[row, corpus.skip[i]] = False
            try:
                model(input_ids=ids.to(dev), attention_mask=real.long().to(dev), use_cache=False)
            except _Stop:
                pass
            count += int(keep.sum())
            for layer in layers:
                k = got[layer][keep.to(dev)].float()
                sums[layer] += (k.T @ k).double().cpu()
    return {layer: (s / max(count, 1)).float() for layer, s in sums.items()}, count


# -- the injector -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One item's prompts: examples for the key average, a subset for the value, one essence prompt."""

    item: KnowledgeItem
    values: list[_Prompt]
    extra_keys: list[_Prompt]
    essence: _Prompt


@dataclass
class WeightsInjector:
    """Knowledge written into MLP down projections by ROME or MEMIT; every edit is exactly undoable.

    ``layers``: block indices (ints; negative count from the end) or fractions
    of depth (floats); None takes :data:`DEFAULT_LAYERS` for the method. MEMIT
    optimises the value at its last layer and spreads the update over all;
    ROME edits one layer and applies the items one after another.

    The value vector: at most ``steps`` Adam steps at ``lr`` on the answer's
    negative log-likelihood over ``value_examples`` example prompts per item,
    stopping once every item's is below ``stop_nll``; plus ``kl_factor`` times
    the KL divergence of the next-token distribution after the ``essence``
    sentence, plus ``weight_decay`` times (‖δ‖ / ‖h‖)², with ‖δ‖ clamped to
    ``clamp`` times the residual norm ‖h‖ at the subject. Keys average
    ``key_examples`` example prompts per item.

    Statistics: ``stats_tokens`` sampled tokens (seeded by ``stats_seed``)
    plus up to ``stats_prompts`` decision prompts of the items' examples and
    ``corpus_texts``. They are computed once per model and layer and cached
    under ``cache_dir()/stats/<model key>``. MEMIT weighs them by λ =
    ``mom2_weight_per_item`` times the number of items: its least squares sums
    over the items, so a fixed λ (MEMIT's 15,000) makes an edit of a few items
    too weak to land and one of many items too strong.
    """

    name: ClassVar[str] = "weights"

    method: str = "memit"
    layers: Sequence[int | float] | None = None
    steps: int = 12
    lr: float = 1.0
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 0.75
    stop_nll: float = 0.05
    key_examples: int = 2
    value_examples: int = 1
    mom2_weight_per_item: float = MOM2_WEIGHT_PER_ITEM
    stats_tokens: int = 20000
    stats_prompts: int = 64
    stats_seed: int = 0
    corpus_texts: Sequence[str] = ()
    essence: str = "When {}, this means"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"bad weights method {self.method!r}; choose one of {', '.join(METHODS)}")
        if min(self.steps, self.key_examples, self.value_examples, self.stats_prompts) < 1:
            raise UsageError("steps, key_examples, value_examples and stats_prompts must be >= 1")
        if min(self.lr, self.clamp, self.mom2_weight_per_item) <= 0 or min(self.kl_factor, self.weight_decay) < 0:
            raise UsageError("lr, clamp and mom2_weight_per_item must be > 0; kl_factor and weight_decay >= 0")
        if self.essence.count("{}") != 1:
            raise UsageError(f"essence template {self.essence!r} needs exactly one {{}} for the situation")

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        """Edit ``policy.lm.model`` in place so that each item's action wins in its situation."""
        t0 = time.perf_counter()
        model = policy.lm.model
        layout = find_layout(model)
        layers = resolve_layers(self.layers, len(layout.blocks), self.method)
        if not items:
            raise UsageError("no knowledge items to inject")
        plans = [self._plan(policy, item) for item in items]
        t1 = time.perf_counter()
        moments, stats = self.statistics(policy, layout, layers, items)
        stats_seconds = time.perf_counter() - t1
        originals = {layer: layout.projections[layer].weight.detach().clone() for layer in layers}

        def restore() -> None:
            with torch.no_grad():
                for layer, weight in originals.items():
                    layout.projections[layer].weight.copy_(weight)
            policy.invalidate()

        pad = policy.lm.tokenizer.pad_token_id
        try:
            with _frozen(model):
                edit = self._rome if self.method == "rome" else self._memit
                report = edit(model, layout, layers, plans, moments, pad)
        except BaseException:
            restore()
            raise
        policy.invalidate()
        touched = sum(int((layout.projections[layer].weight != w).sum()) for layer, w in originals.items())
        seconds = time.perf_counter() - t0
        info = {"method": self.method, "layers": layers, "items": report, "stats_seconds": stats_seconds,
                "edit_seconds": seconds - stats_seconds, **stats}
        return Edit(self.name, list(items), seconds, touched, restore, info)

    # -- preparing prompts ---------------------------------------------------------------------

    def _plan(self, policy: LLMPolicy, item: KnowledgeItem) -> _Plan:
        if item.action not in policy.action_words:
            raise UsageError(f"item action {item.action!r} is not one of {policy.action_words}")
        if not item.examples:
            raise UsageError(f"item for {item.situation!r} has no example observations to edit on")
        tok = policy.lm.tokenizer
        keys = _spread(item.examples, self.key_examples)
        values = _spread(keys, self.value_examples)
        answer = policy.answer_text(item.action)

        def prompt(text: str) -> _Prompt:
            return _make_prompt(tok, policy.decision_prompt(text), item.situation, answer)

        return _Plan(item, [prompt(t) for t in values], [prompt(t) for t in keys if t not in values],
                     _make_prompt(tok, self.essence.format(item.situation), item.situation, None))

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self, policy: LLMPolicy, layout: Layout, layers: list[int],
                   items: list[KnowledgeItem]) -> tuple[dict[int, torch.Tensor], dict]:
        """C = E[k kᵀ] per layer: from the cache, else from the cached corpus, else from a new one."""
        recipe = f"corpus-{self.stats_tokens}-seed{self.stats_seed}"
        folder = cache_dir() / "stats" / model_key(policy.lm, layout) / recipe
        paths = {layer: folder / f"layer-{layer:03d}.safetensors" for layer in layers}
        moments = {layer: _read(p)["mom2"] for layer, p in paths.items() if p.exists()}
        missing = [layer for layer in layers if layer not in moments]
        if missing:
            corpus_path = folder / "corpus.safetensors"
            with _frozen(policy.lm.model):
                if corpus_path.exists():
                    corpus = Corpus.load(corpus_path)
                else:
                    sampled = sample_corpus(policy.lm, self.stats_tokens, self.stats_seed)
                    corpus = self._env_corpus(policy, items) + Corpus(sampled, [[] for _ in sampled])
                    corpus.save(corpus_path)
                fresh, count = second_moments(policy.lm.model, layout, missing, corpus,
                                              policy.lm.tokenizer.pad_token_id)
            for layer, mom2 in fresh.items():
                _write(paths[layer], {"mom2": mom2}, {"tokens": str(count)})
            moments.update(fresh)
        return moments, {"stats_cached": not missing, "stats_dir": str(folder)}

    def _env_corpus(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Corpus:
        """Decision prompts of the items' examples (subject positions skipped) plus ``corpus_texts``."""
        tok = policy.lm.tokenizer
        sequences, skip = [], []
        per_item = max(1, self.stats_prompts // len(items))
        for item in items:
            for text in _spread(item.examples, per_item):
                ids, index = subject_position(tok, policy.decision_prompt(text), item.situation)
                sequences.append(ids)
                skip.append([index])
        for text in self.corpus_texts:
            sequences.append(tok(text, add_special_tokens=False).input_ids[:512])
            skip.append([])
        return Corpus(sequences, skip)

    # -- keys, values and the closed-form updates ----------------------------------------------

    def _encode_plans(self, model: PreTrainedModel, layout: Layout, plans: list[_Plan], top: int,
                      pad: int) -> tuple[_Rows, _Rows | None, _Rows]:
        """Cached rows: value prompts (full depth), the other key prompts (up to block ``top``), essences."""
        def owned(get: Callable[[_Plan], list[_Prompt]]) -> tuple[list[_Prompt], list[int]]:
            pairs = [(p, i) for i, plan in enumerate(plans) for p in get(plan)]
            return [p for p, _ in pairs], [i for _, i in pairs]

        values = _rows(model, *owned(lambda plan: plan.values), pad)
        extra_prompts, extra_owner = owned(lambda plan: plan.extra_keys)
        extra = _rows(model, extra_prompts, extra_owner, pad, stop=layout.blocks[top]) if extra_prompts else None
        essence = _rows(model, *owned(lambda plan: [plan.essence]), pad)
        return values, extra, essence

    def _keys(self, model: PreTrainedModel, layout: Layout, groups: list[_Rows], layer: int, top: int,
              n: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per item: mean key at ``layer`` and mean residual after block ``top``, at the subject."""
        keys, residuals = zip(*(_subject_states(model, layout, rows, layer, top, pad) for rows in groups))
        owner = torch.cat([rows.owner for rows in groups])
        return _per_item(torch.cat(keys), owner, n), _per_item(torch.cat(residuals), owner, n)

    def _optimise(self, model: PreTrainedModel, layout: Layout, layer: int, values: _Rows, essence: _Rows,
                  norms: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item residual shifts δ at the subject after block ``layer``, and the answer log-prob before.

        δ shifts the residual stream, as adding it to the down projection's
        output would. Blocks up to ``layer`` do the same work on the live tokens
        at every step, so their output is recorded once and replayed.
        """
        n = len(norms)
        limit = (self.clamp * norms).float()
        delta = torch.zeros((n, layout.hidden_size), requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        recorded = {id(rows): _block_output(model, layout.blocks[layer], rows, pad) for rows in (values, essence)}

        def shifted(rows: _Rows) -> torch.Tensor:
            out = recorded[id(rows)]
            add = torch.zeros_like(out)
            add[:, 0] = delta[rows.owner].to(out)
            return out + add

        before = init = None
        with torch.enable_grad():
            for step in range(self.steps):
                with _replay(layout.blocks[:layer + 1], shifted(values)):
                    logp = _per_item(_answer_logp(model, values, pad), values.owner, n)
                with _replay(layout.blocks[:layer + 1], shifted(essence)):
                    now = _next_logp(model, essence, pad)
                if step == 0:
                    before, init = logp.detach(), now.detach()
                if bool((-logp < self.stop_nll).all()):
                    break
                kl = _per_item((init.exp() * (init - now)).sum(-1), essence.owner, n)
                decay = (delta.norm(dim=1) / norms.float()) ** 2
                loss = (-logp + self.kl_factor * kl + self.weight_decay * decay).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.mul_((limit / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)[:, None])
        return delta.detach().double(), before

    def _after(self, model: PreTrainedModel, values: _Rows, n: int, pad: int) -> torch.Tensor:
        """Answer log-prob per item under the edited weights, the prompts re-encoded from scratch
        (the edit also changes the context before the subject, so the old cache would mislead)."""
        with torch.no_grad():
            fresh = _rows(model, values.prompts, values.owner.tolist(), pad)
            return _per_item(_answer_logp(model, fresh, pad), fresh.owner, n)

    def _report(self, plans: list[_Plan], before: torch.Tensor, after: torch.Tensor,
                delta: torch.Tensor) -> list[dict]:
        return [{"situation": plan.item.situation, "action": plan.item.action, "logp_before": float(b),
                 "logp_after": float(a), "delta_norm": float(d.norm())}
                for plan, b, a, d in zip(plans, before, after, delta)]

    def _rome(self, model: PreTrainedModel, layout: Layout, layers: list[int], plans: list[_Plan],
              moments: dict[int, torch.Tensor], pad: int) -> list[dict]:
        """One rank-one update per item, in order: ΔW = δ (C⁻¹k)ᵀ / (kᵀ C⁻¹ k), so that ΔW k = δ."""
        layer, report = layers[0], []
        c = moments[layer].double()
        for plan in plans:
            values, extra, essence = self._encode_plans(model, layout, [plan], layer, pad)
            k, z = self._keys(model, layout, [values] + ([extra] if extra else []), layer, layer, 1, pad)
            delta, before = self._optimise(model, layout, layer, values, essence, z.norm(dim=1), pad)
            u = torch.linalg.solve(c, k[0])
            layout.add(layer, torch.outer(delta[0], u) / (k[0] @ u))
            report += self._report([plan], before, self._after(model, values, 1, pad), delta)
        return report

    def _memit(self, model: PreTrainedModel, layout: Layout, layers: list[int], plans: list[_Plan],
               moments: dict[int, torch.Tensor], pad: int) -> list[dict]:
        """MEMIT: shift the residual after the last layer by δ, then per layer l (in order)
        ΔW_l = R Kᵀ (λ C + K Kᵀ)⁻¹ with R the remaining shift divided by the layers left.

        After each layer's update the subject token is re-run to refresh keys and
        residuals; the context before the subject keeps its pre-edit KV cache,
        which the update, fitted to leave other keys alone, barely changes.
        """
        n, top = len(plans), layers[-1]
        values, extra, essence = self._encode_plans(model, layout, plans, top, pad)
        groups = [values] + ([extra] if extra else [])
        k, z0 = self._keys(model, layout, groups, layers[0], top, n, pad)
        delta, before = self._optimise(model, layout, top, values, essence, z0.norm(dim=1), pad)
        for j, layer in enumerate(layers):
            k, z = (k, z0) if j == 0 else self._keys(model, layout, groups, layer, top, n, pad)
            resid = (z0 + delta - z) / (len(layers) - j)
            a = self.mom2_weight_per_item * n * moments[layer].double() + k.T @ k
            layout.add(layer, resid.T @ torch.linalg.solve(a, k.T).T)
        return self._report(plans, before, self._after(model, values, n, pad), delta)
