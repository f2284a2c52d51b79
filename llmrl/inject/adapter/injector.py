"""The live adapter (:class:`AdapterHandle`) and the injector that trains it (:class:`AdapterInjector`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import torch
from peft import PeftModel

from llmrl.engine import Engine
from llmrl.inject import Edit
from llmrl.inject.adapter.objective import (
    Encoded,
    Kept,
    action_logprobs,
    balanced_batches,
    choice_logprobs,
    encode,
    kl_rows,
    locality_kl,
    locality_texts,
    lump_actions,
    prefix_batch,
    row_losses,
)
from llmrl.inject.adapter.routed import ROUTED_KINDS, RoutedTuner
from llmrl.inject.adapter.tuners import KINDS, BiasTuner, PeftTuner, PrefixTuner, Tuner, carries_adapter
from llmrl.knowledge import KnowledgeItem
from llmrl.metrics import locality_prompts as shipped_locality_prompts
from llmrl.policy import LLMPolicy

#: Layers to adapt, per module layout: the MLPs, where ROME and MEMIT locate associations. On
#: SmolLM2-135M, MLP-only adapters changed unrelated prompts 3 to 7 times less than adapters on
#: every linear layer, for the same reliability. GPT-2's attention output is also named c_proj.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "llama": ("gate_proj", "up_proj", "down_proj"),  # Llama, Qwen, Mistral, SmolLM
    "gpt2": ("c_fc", "mlp.c_proj"),
}

OBJECTIVES = ("choice", "lm")


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The MLP layers of the first layout in :data:`LAYOUTS` that the model has."""
    names = [name for name, _ in model.named_modules()]
    for layout in LAYOUTS.values():
        present = [t for t in layout if any(n == t or n.endswith("." + t) for n in names)]
        if present:
            return present
    raise ValueError(f"no known layer names in {type(model).__name__}; pass target_modules")


# -- the live adapter --------------------------------------------------------------------------


class AdapterHandle:
    """The live adapter of one edit: switch it off and on, merge it, remove it exactly (see :mod:`.tuners`)."""

    def __init__(self, policies: list[LLMPolicy], tuner: Tuner, requires_grad: dict[str, bool],
                 training: bool):
        #: The policies (on one model) whose scores the adapter changes: their caches go stale with it.
        self.policies, self.tuner = list(policies), tuner
        self._requires_grad, self._training = requires_grad, training
        self.enabled = True
        self.attached = True
        #: What the adapter was trained to do: (policy, item) pairs, an item dropped when a later one of
        #: its policy and situation supersedes it.
        self.trained: list[tuple[LLMPolicy, KnowledgeItem]] = []

    @property
    def merged(self) -> bool:
        return self.tuner.merged

    @property
    def peft_model(self) -> PeftModel | None:
        """peft's model of a LoRA or IA3 adapter (None for BitFit)."""
        return getattr(self.tuner, "peft_model", None)

    def set_enabled(self, flag: bool) -> None:
        """Switch the adapter's effect on or off (a merged adapter is first unmerged exactly)."""
        if not flag:
            self.tuner.unmerge()
        self.tuner.enable(flag)
        self.enabled = flag
        self.invalidate()

    def merge(self) -> None:
        """Fold the adapter into the weights it wraps (switching it on); the originals are kept for undo."""
        if self.merged:
            return
        if not self.enabled:
            self.set_enabled(True)
        self.tuner.merge()
        self.invalidate()

    def remove(self) -> None:
        """Take the adapter out: the original modules, weights, grad flags and train/eval mode return."""
        self.tuner.remove()
        self.attached = False
        model = self.policies[0].lm.model
        for name, param in model.named_parameters():
            if name in self._requires_grad:
                param.requires_grad_(self._requires_grad[name])
        model.train(self._training)
        self.invalidate()

    def invalidate(self) -> None:
        for policy in self.policies:
            policy.invalidate()


@dataclass
class Task:
    """One policy's items as the adapter trains on them."""

    policy: LLMPolicy
    enc: Encoded
    #: Per item, the untouched model's lumped answer-position log-probabilities of each example.
    reference: list[torch.Tensor]
    #: Per item, the examples to train on; and the (item, example) pairs held out to decide when to stop.
    train: list[list[int]]
    held: list[tuple[int, int]]
    batches: Iterator[list[tuple[int, int]]] = field(repr=False)
    #: The largest action loss of this task's last training batch.
    last: float = float("inf")


# -- the injector ------------------------------------------------------------------------------


class AdapterInjector:
    """Train a fresh adapter on the items, inside the policy's own model.

    ``kind``: ``lora`` (reparameterised PET), ``ia3`` (additive PET: learned
    scales of the target layers' activations) or ``bitfit`` (specification PET:
    the target layers' biases alone); :mod:`.tuners` has each. The objective,
    its locality terms and everything below apply to every kind; ``rank``,
    ``alpha`` and ``dropout`` are LoRA's alone. ``prefix`` (additive PET) trains
    ``tokens`` virtual tokens' keys and values that the policies' prompts, and
    nothing else, read: the model itself does not change.
    ``rank``, ``alpha``, ``dropout``: the LoRA update ``alpha / rank * B A``.
    ``target_modules``: layer names peft matches by suffix (default: the MLPs
    of :data:`LAYOUTS`); ``layers``: only these decoder layers (default: all).
    ``steps`` is the most AdamW steps at ``lr``, each on ``batch_size`` example
    texts (at least one per item); ``stop_loss`` ends training earlier. A joint
    edit (:meth:`inject_jointly`) takes ``steps`` per policy, their batches in turn. The
    defaults edit two CartPole items in 8 steps. ``locality_prompts`` default to the shipped training
    split (``llmrl.metrics.locality_prompts("train")``, never the held-out prompts the locality metric
    uses), ``locality_batch`` of them per step.
    ``save_dir``: where peft writes the adapter (safetensors) after training.
    ``keep_weight``: when the live adapter is trained further on new items (sequential editing), this
    weight times the KL(before || now) of the action choice on the examples of the items it was
    trained on earlier, as Learning without Forgetting (Li & Hoiem, ECCV 2016) holds old tasks' outputs.
    Without it (0), training on one new CartPole item flips the item learned before it.
    ``holdout``: every ``holdout``-th example of an item with at least that many is kept out of training;
    training stops early only once those, too, are below ``stop_loss`` (0: judge by the training batch
    alone). An item against the model's prior (a mirrored control) fits its training examples long
    before it holds on observations it was not trained on.
    ``routed`` (LoRA and IA3): one adapter per policy (per card of a stream) instead of one shared by all,
    each read only by its own policy's forwards (:mod:`.routed`, GRACE/WISE-style side memory); a joint
    edit trains each policy's adapter on its own items.
    """

    name = "adapter"
    edits_parameters = True

    def __init__(self, kind: str = "lora", tokens: int = 8, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: list[str] | None = None, layers: list[int] | None = None,
                 objective: Literal["choice", "lm"] = "choice", steps: int = 40, lr: float = 2e-3,
                 batch_size: int = 4, stop_loss: float = 0.05, answer_weight: float = 1.0,
                 locality_weight: float = 1.0, locality_prompts: list[str] | None = None, locality_batch: int = 4,
                 seed: int = 0, save_dir: Path | str | None = None, keep_weight: float = 1.0,
                 holdout: int = 4, routed: bool = False):
        if holdout < 0 or holdout == 1:
            raise ValueError("holdout must be 0 (off) or at least 2")
        if rank < 1 or tokens < 1 or steps < 1 or batch_size < 1 or locality_batch < 1 or lr <= 0:
            raise ValueError("rank, tokens, steps, batch_size and locality_batch must be >= 1 and lr > 0")
        if not 0 <= dropout < 1 or min(answer_weight, locality_weight, stop_loss, keep_weight) < 0:
            raise ValueError("0 <= dropout < 1 and answer_weight, locality_weight, stop_loss, keep_weight >= 0 "
                             "are required")
        if kind not in KINDS:
            raise ValueError(f"bad adapter kind {kind!r}; choose one of {', '.join(KINDS)}")
        if routed and kind not in ROUTED_KINDS:
            raise ValueError(f"routed adapters are {' or '.join(ROUTED_KINDS)}; {kind} keeps one set per model")
        if objective not in OBJECTIVES:
            raise ValueError(f"bad objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        self.kind, self.tokens, self.rank, self.alpha, self.dropout = kind, tokens, rank, alpha, dropout
        self.target_modules, self.layers, self.objective = target_modules, layers, objective
        self.steps, self.lr, self.batch_size, self.stop_loss = steps, lr, batch_size, stop_loss
        self.answer_weight, self.locality_weight, self.locality_batch = answer_weight, locality_weight, locality_batch
        self.locality_prompts = list(locality_prompts or shipped_locality_prompts("train"))
        self.seed, self.keep_weight, self.holdout = seed, keep_weight, holdout
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.routed = routed
        #: The adapter of the last edit, per policy when routed (None: one for every policy).
        self._live: dict[LLMPolicy | None, AdapterHandle] = {}

    def _attach(self, model: torch.nn.Module, policies: list[LLMPolicy], engine: Engine, first: Encoded
                ) -> Tuner:
        if self.kind == "prefix":
            return PrefixTuner(model, [p.engine for p in policies] + [engine], first.prefix, self.tokens)
        targets = self.target_modules or default_target_modules(model)
        if self.routed:
            tuner = RoutedTuner(model, self.kind, targets, self.layers, self.rank, self.alpha, self.dropout)
            for e in [p.engine for p in policies] + [engine]:
                tuner.follow(e)
            return tuner
        if self.kind == "bitfit":
            return BiasTuner(model, targets, self.layers)
        return PeftTuner(model, self.kind, targets, self.layers, self.rank, self.alpha, self.dropout)

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        """Attach a new adapter to ``policy.lm.model``, train it on ``items`` and return the edit.

        On a model that still carries the adapter of this injector's last edit, the edit trains that
        adapter further instead (sequential editing); undoing it restores the adapter's weights.
        """
        live = self._live.get(policy if self.routed else None)
        if live is not None and not (live.attached and live.policies[0].lm.model is policy.lm.model):
            live = None  # another card's counts too, unless routed
        if live is None:
            return self.inject_jointly([(policy, items)])
        t0 = time.perf_counter()
        items = _trainable(policy, items)
        engine = Engine(policy.lm.model, _pad(policy))
        for e in (engine, policy.engine):  # a prefix reaches the new engine and a policy it did not reach yet
            live.tuner.follow(e)
        return self._continue(policy, live, engine, self._task(engine, policy, items), items, t0)

    def inject_jointly(self, pairs: list[tuple[LLMPolicy, list[KnowledgeItem]]]) -> Edit:
        """One new adapter trained on every policy's items at once: policies of one model (one per card of a
        stream), each step's batch from the next policy's items in turn, so each card counts the same."""
        if self.routed and len(pairs) > 1:
            return _joined([self.inject_jointly([pair]) for pair in pairs if _trainable(*pair, some=True)])
        t0 = time.perf_counter()
        model = pairs[0][0].lm.model
        if any(p.lm.model is not model for p, _ in pairs):
            raise ValueError("a joint edit needs every policy on the same model")
        live = self._live.get(pairs[0][0]) if self.routed else None
        if (live is not None and live.attached) or (not self.routed and carries_adapter(model)):
            raise RuntimeError("the policy's model already carries an adapter; undo the previous edit first")
        pairs = [(p, _trainable(p, items, len(pairs) > 1)) for p, items in pairs]
        pairs = [(p, items) for p, items in pairs if items]
        if not pairs:
            raise ValueError("no knowledge item has example texts to train on")
        engine = Engine(model, _pad(pairs[0][0]))
        tasks = [self._task(engine, p, items, n) for n, (p, items) in enumerate(pairs)]
        policies = [p for p, _ in pairs]
        # a routed adapter's router keeps the flags until its last adapter goes
        requires_grad = {} if self.routed else {n: p.requires_grad for n, p in model.named_parameters()}
        training = model.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tuner = self._attach(model, policies, engine, tasks[0].enc)
            handle = AdapterHandle(policies, tuner, requires_grad, training)
            try:
                final = self._train(engine, tuner, tasks)
                path = tuner.save(self.save_dir) if self.save_dir is not None else None
            except BaseException:  # no edit to undo would be returned: take the adapter out here
                handle.remove()
                raise
        model.train(training)
        handle.invalidate()
        self._live[policies[0] if self.routed else None] = handle
        handle.trained = [(p, i) for p, items in pairs for i in items]
        info = {"kind": self.kind, "rank": self.rank, "objective": self.objective, **final,
                "target_modules": tuner.targets, "adapter": handle}
        if path is not None:
            info["path"] = str(path)
        params = sum(p.numel() for p in tuner.parameters())
        return Edit("adapter", [i for _, items in pairs for i in items], time.perf_counter() - t0, params,
                    handle.remove, info=info)

    def _task(self, engine: Engine, policy: LLMPolicy, items: list[KnowledgeItem], n: int = 0) -> Task:
        """The items as a training task: encoded, with the untouched model's reference (read now, before
        training changes anything) and their batches (the first task's seeded as a single edit's)."""
        enc = encode(policy, items)
        reference = self._reference(engine, enc) if self.answer_weight > 0 else []
        train, held = self._split(enc)
        batches = ([(i, train[i][e]) for i, e in b] for b in balanced_batches(
            [len(t) for t in train], max(self.batch_size, len(enc.suffixes)),
            torch.Generator().manual_seed(self.seed + 1000 * n)))
        return Task(policy, enc, reference, train, held, batches)

    def _continue(self, policy: LLMPolicy, live: AdapterHandle, engine: Engine, task: Task,
                  items: list[KnowledgeItem], t0: float) -> Edit:
        """Train the live adapter further on ``items``; the edit's undo puts its weights back exactly."""
        if live.merged or not live.enabled:
            raise RuntimeError("the adapter to train further is merged or switched off; unmerge or enable it first")
        model = policy.lm.model
        params = live.tuner.parameters()
        before = [p.detach().clone() for p in params]
        training, trained = model.training, live.trained
        new = {i.situation for i in items}
        earlier = [(p, i) for p, i in trained if not (p is policy and i.situation in new)]
        keep = self._kept(engine, earlier) if self.keep_weight > 0 else []
        policies = live.policies

        def restore() -> None:
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(b)
            live.trained, live.policies = trained, policies
            live.invalidate()
            policy.invalidate()

        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                final = self._train(engine, live.tuner, [task], keep)
            if self.save_dir is not None:
                live.tuner.save(self.save_dir)
        except BaseException:
            restore()
            raise
        finally:
            model.train(training)
        live.policies = policies + [policy] * all(p is not policy for p in policies)
        live.invalidate()
        live.trained = earlier + [(policy, i) for i in items]
        info = {"rank": self.rank, "objective": self.objective, **final, "continued": True,
                "kept_items": sum(len(k.choices) for k in keep), "adapter": live}
        return Edit("adapter", list(items), time.perf_counter() - t0, sum(p.numel() for p in params), restore,
                    info=info)

    @staticmethod
    @torch.no_grad()
    def _reference(engine: Engine, enc: Encoded, chunk: int = 16) -> list[torch.Tensor]:
        """Per item, the untouched model's lumped answer-position log-probabilities of each example."""
        prefix = prefix_batch(engine, enc)
        out = []
        for suffixes in enc.suffixes:
            parts = [torch.log_softmax(engine.answer(prefix, suffixes[i:i + chunk])[0], -1)
                     for i in range(0, len(suffixes), chunk)]
            out.append(lump_actions(torch.cat(parts), enc.actions))
        return out

    def _split(self, enc: Encoded) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """Per item, the examples to train on; and the (item, example) pairs held out to decide when to stop."""
        every = self.holdout
        held = [(i, e) for i, rows in enumerate(enc.suffixes) if every and len(rows) >= every
                for e in range(every - 1, len(rows), every)]
        out = set(held)
        return [[e for e in range(len(rows)) if (i, e) not in out] for i, rows in enumerate(enc.suffixes)], held

    @torch.no_grad()
    def _held_loss(self, engine: Engine, enc: Encoded, held: list[tuple[int, int]], chunk: int = 16) -> float:
        """The largest action loss among the held-out examples."""
        worst = 0.0
        for n in range(0, len(held), chunk):
            rows = held[n:n + chunk]
            scores, _ = action_logprobs(engine, enc, [enc.suffixes[i][e] for i, e in rows])
            targets = torch.tensor([enc.targets[i] for i, _ in rows], device=scores.device)
            worst = max(worst, float(row_losses(scores, targets, enc, self.objective).max()))
        return worst

    @torch.no_grad()
    def _kept(self, engine: Engine, earlier: list[tuple[LLMPolicy, KnowledgeItem]], chunk: int = 16) -> list[Kept]:
        """Per policy, its earlier items' examples and the live adapter's choice on each, to hold."""
        groups: dict[int, tuple[LLMPolicy, list[KnowledgeItem]]] = {}
        for policy, item in earlier:
            if item.examples:
                groups.setdefault(id(policy), (policy, []))[1].append(item)
        kept = []
        for n, (policy, items) in enumerate(groups.values()):
            enc = encode(policy, items)
            choices = []
            for suffixes in enc.suffixes:
                scores = torch.cat([action_logprobs(engine, enc, suffixes[i:i + chunk])[0]
                                    for i in range(0, len(suffixes), chunk)])
                choices.append(choice_logprobs(scores, enc))
            batches = balanced_batches([len(s) for s in enc.suffixes], max(self.batch_size, len(items)),
                                       torch.Generator().manual_seed(self.seed + 2 + n))
            kept.append(Kept(enc, choices, batches))
        return kept

    def _train(self, engine: Engine, tuner: Tuner, tasks: list[Task], keep: list[Kept] = ()
               ) -> dict[str, float | int]:
        """AdamW on the LoRA weights; returns the steps taken and the last step's loss terms.

        Each step trains on a batch of the next task in turn. With ``keep``, each step also holds one
        group's earlier choices (groups in turn). Training stops early once every task's last batch,
        its held-out examples and the keep term are below ``stop_loss``.

        The base model runs in eval mode (its own dropout off), the LoRA dropout
        in train mode; the caller puts the model back in its own mode afterwards. A routed adapter is
        switched on throughout, for the locality term's forwards, which run outside any engine.
        """
        with tuner.active():
            return self._steps(engine, tuner, tasks, keep)

    def _steps(self, engine: Engine, tuner: Tuner, tasks: list[Task], keep: list[Kept]) -> dict[str, float | int]:
        policy = tasks[0].policy
        model, tok, pad = policy.lm.model, policy.lm.tokenizer, _pad(policy)
        local = [tok(t, add_special_tokens=False).input_ids for t in locality_texts(self.locality_prompts, tok)]
        local_gen = torch.Generator().manual_seed(self.seed + 1)
        opt = torch.optim.AdamW(tuner.parameters(), lr=self.lr, weight_decay=0.0)
        model.eval()
        tuner.train_mode()
        loss = answer_kl = kl = keep_kl = torch.zeros(())
        step = 0
        for step in range(1, self.steps * len(tasks) + 1):  # a joint edit: each task its own steps
            task = tasks[(step - 1) % len(tasks)]
            enc, batch = task.enc, next(task.batches)
            scores, first = action_logprobs(engine, enc, [enc.suffixes[i][e] for i, e in batch])
            targets = torch.tensor([enc.targets[i] for i, _ in batch], device=scores.device)
            losses = row_losses(scores, targets, enc, self.objective)
            loss = losses.mean()
            if self.answer_weight > 0:
                ref = torch.stack([task.reference[i][e] for i, e in batch]).to(first.device)
                answer_kl = kl_rows(ref, lump_actions(first, enc.actions)).mean()
            if self.locality_weight > 0:
                pick = torch.randperm(len(local), generator=local_gen)[: self.locality_batch].tolist()
                kl = locality_kl(tuner, [local[i] for i in pick], pad)
            if keep:
                group = keep[(step - 1) % len(keep)]
                pairs = next(group.batches)
                now, _ = action_logprobs(engine, group.enc, [group.enc.suffixes[i][e] for i, e in pairs])
                was = torch.stack([group.choices[i][e] for i, e in pairs]).to(now.device)
                keep_kl = kl_rows(was, choice_logprobs(now, group.enc)).mean()
            opt.zero_grad(set_to_none=True)
            (loss + self.answer_weight * answer_kl + self.locality_weight * kl + self.keep_weight * keep_kl).backward()
            opt.step()
            task.last = float(losses.detach().max())
            if max(max(t.last for t in tasks), float(keep_kl.detach())) < self.stop_loss and all(
                    not t.held or self._held_loss(engine, t.enc, t.held) < self.stop_loss for t in tasks):
                break
        final = {"steps": step, "final_loss": float(loss.detach()), "final_answer_kl": float(answer_kl.detach()),
                 "final_locality_kl": float(kl.detach())}
        return final | ({"final_keep_kl": float(keep_kl.detach())} if keep else {})


def _joined(edits: list[Edit]) -> Edit:
    """Routed adapters' edits of one joint edit as one, undone newest first."""
    if not edits:
        raise ValueError("no knowledge item has example texts to train on")

    def undo() -> None:
        for edit in reversed(edits):
            edit.undo()

    return Edit("adapter", [i for e in edits for i in e.items], sum(e.seconds for e in edits),
                sum(e.params_touched for e in edits), undo,
                info={"routed": True, "adapters": [{k: v for k, v in e.info.items() if k != "adapter"}
                                                   for e in edits]})


def _trainable(policy: LLMPolicy, items: list[KnowledgeItem], some: bool = False) -> list[KnowledgeItem]:
    """The items with example texts to train on (``some``: an empty list is fine, else an error)."""
    if policy.prompt.reasoning:
        raise ValueError("the adapter trains the answer that follows the prompt; a chain-of-thought "
                         "policy answers after a rationale it generates")
    items = [i for i in items if i.examples]
    if not items and not some:
        raise ValueError("no knowledge item has example texts to train on")
    return items


def _pad(policy: LLMPolicy) -> int:
    tok = policy.lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
