"""Adapter strategy (association phase): knowledge as a LoRA adapter trained on the items' observations.

Like LoRA-based editors (T-Patcher, MELO), the base weights stay as they are:
peft wraps the chosen Linear layers of ``policy.lm.model`` in place, so the
very model object the policy calls gains a low-rank branch, and the branch can
be switched off, merged into the weights, saved and removed.

Training objective, per step:

- cross-entropy on the action tokens of ``policy.answer_text(item.action)``
  after ``policy.decision_prompt(text)`` for the items' example texts, every
  item weighted equally whatever its number of examples;
- plus ``locality_weight`` times the next-token KL(frozen || adapted) on
  unrelated prompts, at every position, the frozen reference taken with the
  adapter switched off.

Speed: all decision prompts share the policy's prefix (chat template and
instructions, most of the tokens), so each step runs it once, with gradients,
and repeats its KV cache over the batch; only the answer positions get logits.
Training stops early once every row of a step's batch gives its action tokens
a cross-entropy below ``stop_loss``.

Life cycle: ``inject`` returns an :class:`~llmrl.inject.Edit` whose
``info["adapter"]`` is an :class:`AdapterHandle` (switch on/off, merge).
``undo`` removes the adapter and leaves the model bit-exactly as it was, even
after a merge: ``merge`` keeps a copy of every weight it changes and removal
writes that copy back, rather than subtracting the low-rank product (which
would round). One adapter per model: ``inject`` refuses a model that already
carries peft layers, so the caller undoes the previous edit first (the loop
does).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.pytorch_utils import Conv1D

from llmrl.inject import Edit
from llmrl.knowledge import KnowledgeItem
from llmrl.policy import LLMPolicy

#: Linear layers to adapt, per module layout: Llama-style (Llama, Qwen, Mistral, SmolLM) and GPT-2.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}

#: Used when no locality prompts are given: general text, far from any environment.
DEFAULT_LOCALITY_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The recipe calls for two cups of flour and",
    "Photosynthesis is the process by which plants",
    "In 1969, the first humans walked on",
    "To install the package, open a terminal and type",
    "The quick brown fox jumps over the",
    "My favourite season of the year is autumn because",
    "The mitochondria is often called the",
    "Dear Sir or Madam, I am writing to",
    "The stock market fell sharply today after",
    "A triangle has three sides, while a square has",
    "She opened the door and saw",
    "The largest ocean on Earth is the",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "The meeting has been moved to Thursday at",
    "Shakespeare wrote many plays, including",
    "Good morning! How can I help you",
    "The train to London leaves from platform",
    "Regular exercise improves your health by",
    "The chemical symbol for gold is",
    "He played the piano every evening, and his neighbours",
    "The library is closed on Sundays, so we",
    "Translate into French: The cat is sleeping.",
    "The weather forecast for tomorrow says it will",
    "Elephants are the largest land animals, and they",
    "Please remember to bring your passport and",
    "The speed of light in a vacuum is about",
    "After the rain stopped, the children ran outside to",
)


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The first layout in :data:`LAYOUTS` whose layer names the model has (all its linear layers)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for names in LAYOUTS.values():
        present = [n for n in names if n in leaves]
        if present:
            return present
    raise ValueError(f"no known layer names in {type(model).__name__}; pass target_modules")


def encode(policy: LLMPolicy, items: list[KnowledgeItem]) -> tuple[list[int], list[list[tuple[list[int], list[int]]]]]:
    """Token ids: the prefix every decision prompt shares, and per item its (rest of prompt, answer) rows.

    The answer is tokenised on its own, as the policy scores it; the shared
    prefix is measured on the token ids rather than assumed, and stops one
    token short of the shortest prompt so every row has a position to predict from.
    """
    tok = policy.lm.tokenizer
    prompts = [[tok(policy.decision_prompt(t), add_special_tokens=False).input_ids for t in item.examples]
               for item in items]
    flat = [p for rows in prompts for p in rows]
    shared = min(len(p) for p in flat) - 1
    for p in flat[1:]:
        shared = next((i for i, (a, b) in enumerate(zip(flat[0][:shared], p)) if a != b), shared)
    answers = [tok(policy.answer_text(item.action), add_special_tokens=False).input_ids for item in items]
    return flat[0][:shared], [[(p[shared:], a) for p in rows] for rows, a in zip(prompts, answers)]


def balanced_batches(rows: list[list[tuple[list[int], list[int]]]], batch_size: int,
                     gen: torch.Generator) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Endless batches that take items in turn, so each item counts the same whatever its number of examples.

    Within an item, examples come in shuffled passes, so all are seen equally often.
    """
    queues: list[list[int]] = [[] for _ in rows]
    turn = 0
    while True:
        batch = []
        for _ in range(batch_size):
            item = turn % len(rows)
            turn += 1
            if not queues[item]:
                queues[item] = torch.randperm(len(rows[item]), generator=gen).tolist()
            batch.append(rows[item][queues[item].pop()])
        yield batch


def answer_losses(model: torch.nn.Module, prefix: list[int], rows: list[tuple[list[int], list[int]]],
                  pad: int) -> torch.Tensor:
    """Cross-entropy of each row's answer tokens (mean over them), all rows run on one shared prefix.

    The prefix runs once and its KV cache is repeated over the rows; rows are
    left-padded so every answer ends in the last column, and only the last
    ``answer + 1`` positions get logits.
    """
    dev = next(model.parameters()).device
    n, p = len(rows), len(prefix)
    cache = None
    if p:
        cache = model(input_ids=torch.tensor([prefix], device=dev), use_cache=True, logits_to_keep=1).cache
        cache.batch_repeat_interleave(n)
    width = max(len(s) + len(a) for s, a in rows)
    k = max(len(a) for _, a in rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, p + width), dtype=torch.long)
    mask[:, :p] = 1
    pos = torch.full((n, width), p, dtype=torch.long)
    targets = torch.full((n, k), -100, dtype=torch.long)
    for i, (suffix, answer) in enumerate(rows):
        seq = suffix + answer
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, p + width - len(seq):] = 1
        pos[i, width - len(seq):] = torch.arange(p, p + len(seq))
        targets[i, k - len(answer):] = torch.tensor(answer)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), cache=cache,
                   use_cache=cache is not None, logits_to_keep=k + 1).logits[:, :-1].float()
    targets = targets.to(dev)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return ce.sum(1) / (targets != -100).sum(1)


def locality_kl(peft_model: PeftModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token KL(frozen || adapted) over every real position of right-padded prompts."""
    with torch.no_grad(), peft_model.disable_adapter():
        ref = torch.log_softmax(peft_model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    cur = torch.log_softmax(peft_model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def locality_texts(prompts: list[str], tokenizer) -> list[str]:
    """The prompts as plain text and, with a chat template, also as a user turn awaiting the answer.

    The policy reads chat turns, and an adapter trained to answer "left" at
    the start of an assistant turn would answer it to every chat prompt;
    anchoring the assistant's first token on general requests keeps it local.
    """
    if not tokenizer.chat_template:
        return list(prompts)
    return list(prompts) + [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                          add_generation_prompt=True) for p in prompts]


def pad_right(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, mask


class AdapterHandle:
    """The live adapter of one edit: switch it off and on, merge it, remove it exactly.

    peft would unmerge by subtracting the low-rank product, which rounds;
    here the weights a merge changes are copied first and written back when
    the adapter is switched off or removed, so the base weights return bit-exactly.
    """

    def __init__(self, policy: LLMPolicy, peft_model: PeftModel, requires_grad: dict[str, bool], training: bool):
        self.policy, self.peft_model = policy, peft_model
        self._requires_grad, self._training = requires_grad, training
        self._backup: dict[LoraLayer, torch.Tensor] = {}
        self.enabled = True

    @property
    def merged(self) -> bool:
        return bool(self._backup)

    def _layers(self) -> list[LoraLayer]:
        return [m for m in self.peft_model.modules() if isinstance(m, LoraLayer)]

    def set_enabled(self, flag: bool) -> None:
        """Switch the adapter's effect on or off (a merged adapter is unmerged exactly first)."""
        if not flag:
            self._unmerge()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns about bias="none", which we use
            (self.peft_model.base_model.enable_adapter_layers if flag else
             self.peft_model.base_model.disable_adapter_layers)()
        self.enabled = flag
        self.policy.invalidate()

    def merge(self) -> None:
        """Fold the adapter into the weights it wraps (switching it on); the original weights are kept for undo."""
        if self.merged:
            return
        if not self.enabled:
            self.set_enabled(True)
        self._backup = {layer: layer.get_base_layer().weight.detach().clone() for layer in self._layers()}
        self.peft_model.merge_adapter()
        self.policy.invalidate()

    def _unmerge(self) -> None:
        with torch.no_grad():
            for layer, weight in self._backup.items():
                layer.get_base_layer().weight.copy_(weight)
                layer.merged_adapters = []
        self._backup = {}

    def remove(self) -> None:
        """Take the adapter out: the original modules, weights, grad flags and train/eval mode return."""
        self._unmerge()
        self.peft_model.unload()
        model = self.policy.lm.model
        for name, param in model.named_parameters():
            param.requires_grad_(self._requires_grad[name])
        model.train(self._training)
        self.policy.invalidate()


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


class AdapterInjector:
    """Train a fresh LoRA adapter on the items, inside the policy's own model."""

    name = "adapter"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: list[str] | None = None, layers: list[int] | None = None, steps: int = 40,
                 lr: float = 2e-3, batch_size: int = 8, stop_loss: float = 0.05, locality_weight: float = 1.0,
                 locality_prompts: list[str] | None = None, locality_batch: int = 8, seed: int = 0,
                 save_dir: Path | str | None = None):
        if rank < 1 or steps < 1 or batch_size < 1 or locality_batch < 1 or lr <= 0:
            raise ValueError("rank, steps, batch_size and locality_batch must be >= 1 and lr > 0")
        if not 0 <= dropout < 1 or locality_weight < 0 or stop_loss < 0:
            raise ValueError("0 <= dropout < 1, locality_weight >= 0 and stop_loss >= 0 are required")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.target_modules, self.layers = target_modules, layers
        self.steps, self.lr, self.batch_size, self.stop_loss = steps, lr, batch_size, stop_loss
        self.locality_weight, self.locality_batch = locality_weight, locality_batch
        self.locality_prompts = list(locality_prompts or DEFAULT_LOCALITY_PROMPTS)
        self.seed = seed
        self.save_dir = Path(save_dir) if save_dir is not None else None

    def _config(self, model: torch.nn.Module) -> LoraConfig:
        targets = self.target_modules or default_target_modules(model)
        conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          layers_to_transform=self.layers, fan_in_fan_out=conv1d, bias="none")

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        """Attach a new adapter to ``policy.lm.model``, train it on ``items`` and return the edit."""
        t0 = time.perf_counter()
        model = policy.lm.model
        if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            raise RuntimeError("the policy's model already carries an adapter; undo the previous edit first")
        items = [i for i in items if i.examples]
        if not items:
            raise ValueError("no knowledge item has example texts to train on")
        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        training = model.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations peft still calls
                peft_model = get_peft_model(model, self._config(model))
            handle = AdapterHandle(policy, peft_model, requires_grad, training)
            try:
                ce, kl, steps = self._train(policy, peft_model, items)
            except BaseException:
                handle.remove()
                raise
        model.train(training)
        policy.invalidate()
        info = {"rank": self.rank, "steps": steps, "final_ce": ce, "final_locality_kl": kl,
                "target_modules": sorted(peft_model.peft_config["default"].target_modules), "adapter": handle}
        if self.save_dir is not None:
            peft_model.save_pretrained(self.save_dir, safe_serialization=True, save_embedding_layers=False)
            info["path"] = str(self.save_dir / "adapter_model.safetensors")
        params = sum(p.numel() for p in lora_parameters(model))
        return Edit("adapter", list(items), time.perf_counter() - t0, params, handle.remove, info=info)

    def _train(self, policy: LLMPolicy, peft_model: PeftModel, items: list[KnowledgeItem]) -> tuple[float, float, int]:
        """AdamW on the LoRA weights; returns the last step's answer CE, locality KL and the steps taken.

        The base model runs in eval mode (its own dropout off), the LoRA dropout in
        train mode; the caller puts the model back in its own mode afterwards.
        """
        model = policy.lm.model
        pad = policy.lm.tokenizer.pad_token_id
        dev = next(model.parameters()).device
        prefix, rows = encode(policy, items)
        batches = balanced_batches(rows, max(self.batch_size, len(rows)), torch.Generator().manual_seed(self.seed))
        tok = policy.lm.tokenizer
        local = [tok(t, add_special_tokens=False).input_ids for t in locality_texts(self.locality_prompts, tok)]
        local_gen = torch.Generator().manual_seed(self.seed + 1)
        params = lora_parameters(model)
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        model.eval()
        for layer in peft_model.modules():
            if isinstance(layer, LoraLayer):
                layer.lora_dropout.train()
        ce = kl = torch.zeros(())
        step = 0
        for step in range(1, self.steps + 1):
            losses = answer_losses(model, prefix, next(batches), pad)
            ce = losses.mean()
            loss = ce
            if self.locality_weight > 0:
                pick = torch.randperm(len(local), generator=local_gen)[: self.locality_batch].tolist()
                kl = locality_kl(peft_model, *pad_right([local[i] for i in pick], pad, dev))
                loss = loss + self.locality_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if float(losses.detach().max()) < self.stop_loss:
                break
        return float(ce), float(kl), step
