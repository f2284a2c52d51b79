"""The capacity benchmark: N pool items in one model by one method, then erase some and undo all.

One model carries a policy per card of the sampled items (the shared model an
edit through any of them changes) and one :class:`~llmrl.learner.Learner`:

- **insert**: batch (every item in one edit: one joint edit across cards where
  the injector makes one, else one per card) or sequential (one edit per item,
  each on top of the earlier ones, as lifelong editing measures);
- **measure**: reliability on the items' examples, generalization (fresh
  observations of the items' situations, and the examples under a reworded
  prompt; an observation key has only the latter), locality (next-token KL and
  top-1 agreement on the shipped held-out prompts against the untouched model),
  the edit seconds and the parameters touched;
- **erase** one item, then ten more, as the learner erases: batch rebuilds the
  edit of the items left; sequential undoes the edits back to the oldest one
  that wrote an erased item and replays the later items still held. An erase
  is good (``erase_ok``) when the erased items' examples choose what the
  knowledge left says (share >= :data:`RESTORED_MIN`: the untouched model's
  choice, or the action of a coarser item still in force, as an observation
  item's situation) and the items left lose at most :data:`KEPT_DROP_MAX`
  reliability. The erased examples are scored before the insert and after the
  erase in identical batches, so that bf16 near-ties, which move with a batch's
  shape, cannot pass for an edit's trace;
- **undo** every edit: ``undo_exact`` when every parameter and buffer of the
  model is bit-identical to before (a SHA-256 over the state dict) and every
  policy's prompt is the original.

With ``episodes``, each card that holds items from real runs is also played
(the evaluation seeds, at most ``max_steps`` decisions an episode) before the
insert and after it: whether knowledge that played well alone still plays
among N - 1 other edits.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from llmrl.capacity.pool import ORIGINS, PoolItem, build_pool, load_pool
from llmrl.cards import get_card, situation_of
from llmrl.errors import UsageError
from llmrl.evaluate import eval_seed, evaluate
from llmrl.knowledge import KnowledgeBase, KnowledgeItem
from llmrl.learner import Learner, injector_settings, make_injector
from llmrl.metrics import LocalityProbe, locality_prompts
from llmrl.models import LoadedModel, load_model
from llmrl.policy import LLMPolicy
from llmrl.prompts import card_prompt
from llmrl.strategies import METHODS

#: The pool every N is drawn from (a seeded sample), so that the figures for different N share items.
POOL_SIZE = 1000
#: An erase is good when this share of the erased items' examples choose what the knowledge left says ...
RESTORED_MIN = 0.95
#: ... and the items left lose at most this much reliability.
KEPT_DROP_MAX = 0.05
NO_CHANGES: dict[str, list[KnowledgeItem]] = {"insert": [], "modify": [], "retain": [], "erase": []}


@dataclass
class CapacityResult:
    method: str
    items: int
    sequential: bool
    seed: int
    model: str
    #: The injector options set on top of the method's own (``--set``), and every option it ran with.
    options: dict[str, Any]
    injector: dict[str, Any]
    #: Device, dtype and torch threads the model ran with.
    runtime: dict[str, Any]
    origins: dict[str, int]
    #: The untouched model's agreement with the items' actions on their examples.
    reliability_before: float
    reliability: float
    #: Reliability on the examples where the untouched model chose another action than the item's: the
    #: edit's own effect, apart from the model's prior (None when the model already agreed everywhere).
    reliability_changed: float | None
    generalization: float | None
    #: Its two parts: fresh observations of the items' situations (None when no item has any), and the
    #: items' examples under the reworded prompt.
    generalization_fresh: float | None
    generalization_reworded: float | None
    locality_kl: float
    locality_top1: float
    edit_seconds: float
    #: Scalars the edits change: the edit's count in batch, the largest edit's in sequential (each edit
    #: of a method writes the same modules).
    params_touched: int
    erase: list[dict[str, Any]]
    #: Per card holding run items (with ``episodes``): the mean return before the insert and after it.
    returns: dict[str, dict[str, float]]
    erase_ok: bool
    undo_exact: bool
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_digest(lm: LoadedModel) -> str:
    """SHA-256 over every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in lm.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Bench:
    """The policies, knowledge bases and learner of one benchmark, with the measurements they share."""

    def __init__(self, lm: LoadedModel, items: list[PoolItem], method: str, sequential: bool,
                 options: dict[str, Any]):
        self.lm, self.items = lm, items
        spec = METHODS[method]
        self.options = {**dict(spec.options), **options}
        self.tasks: dict[str, tuple[LLMPolicy, KnowledgeBase]] = {}
        for p in items:
            if p.card not in self.tasks:
                card = get_card(p.card)[0]
                policy = LLMPolicy(lm, card_prompt(card), default_action=card.action_words.index(
                    card.default_action_word))
                self.tasks[p.card] = (policy, KnowledgeBase())
        self.prompts = {k: policy.prompt for k, (policy, _) in self.tasks.items()}
        self.learner = Learner(self.tasks, make_injector(spec.strategy, dict(self.options)), None,
                               "sequential" if sequential else "rebuild")
        #: The untouched model's action word on every example, per (card, text), each card's in one batch.
        pairs = [(p.card, t) for p in items for t in p.item.examples]
        self.untouched = dict(zip(pairs, self.chosen(pairs)))

    def chosen(self, pairs: list[tuple[str, str]], cached: bool = True) -> list[str]:
        """The action word chosen on each (card, text), each card's texts scored in one batch by its policy
        (``cached=False``: afresh, in exactly that batch; see :meth:`LLMPolicy.scores`)."""
        out: dict[int, str] = {}
        for card, (policy, _) in self.tasks.items():
            rows = [i for i, (c, _) in enumerate(pairs) if c == card]
            if rows:
                picks = policy.scores([pairs[i][1] for i in rows], cached=cached).argmax(-1).tolist()
                out |= {i: policy.action_words[k] for i, k in zip(rows, picks)}
        return [out[i] for i in range(len(pairs))]

    def hits(self, items: list[PoolItem]) -> dict[tuple[str, str, str], bool]:
        """Per (card, item key, example text): whether the policy chooses the item's action there."""
        rows = [(p.card, p.item.situation, t, p.item.action) for p in items for t in p.item.examples]
        chosen = self.chosen([(c, t) for c, _, t, _ in rows])
        return {(c, key, t): word == a for (c, key, t, a), word in zip(rows, chosen)}

    def reliability(self, items: list[PoolItem], changed: bool = False,
                    hits: dict[tuple[str, str, str], bool] | None = None) -> float | None:
        """Agreement with the items' actions on their examples (``changed``: only where the untouched model
        chose another action), read from ``hits`` where the policy was scored in this state already."""
        hits = self.hits(items) if hits is None else hits
        found = [hits[(p.card, p.item.situation, t)] for p in items for t in p.item.examples
                 if not changed or self._word(p.card, t) != p.item.action]
        return sum(found) / len(found) if found else None

    def _word(self, card: str, text: str) -> str:
        return self.untouched[(card, text)]

    def generalization(self, items: list[PoolItem]) -> tuple[float | None, float | None]:
        """Agreement on fresh observations, and on the examples under the reworded prompt (as llmrl.metrics)."""
        triples = [(p.card, t, p.item.action) for p in items for t in p.fresh]
        fresh = _share(self.chosen([(c, t) for c, t, _ in triples]), [a for _, _, a in triples])
        edited = {k: policy.prompt for k, (policy, _) in self.tasks.items()}  # a context edit's prompt
        for policy, _ in self.tasks.values():
            policy.set_prompt(replace(policy.prompt, style="reworded"))
        try:
            reworded = self.reliability(items)
        finally:
            for k, (policy, _) in self.tasks.items():
                policy.set_prompt(edited[k])
        return fresh, reworded

    @staticmethod
    def examples(gone: list[PoolItem]) -> list[tuple[str, str]]:
        return [(p.card, t) for p in gone for t in p.item.examples]

    def untouched_batch(self, gone: list[PoolItem]) -> list[str]:
        """The untouched model's choices on the items' examples, scored afresh in the very batches that
        :meth:`restored` scores them in after their erase (call before the insert): a bf16 near-tie then
        falls the same way in both, so only the edits left can move a choice."""
        return self.chosen(self.examples(gone), cached=False)

    def expected(self, gone: list[PoolItem], untouched: list[str]) -> list[str]:
        """The action word each erased item's example should get (as :meth:`examples` orders them): what
        the knowledge left says there, the action of an item left keyed by the example itself, else by its
        situation (a coarser item still in force holds it), else ``untouched``, the untouched model's."""
        out = []
        for (card, t), before in zip(self.examples(gone), untouched):
            held = self.tasks[card][1].items
            cover = held.get(t) or held.get(situation_of(t) or "")
            out.append(cover.action if cover is not None else before)
        return out

    def restored(self, gone: list[PoolItem], untouched: list[str]) -> float:
        """Share of the erased items' examples on which the policy chooses what the knowledge left says."""
        now = self.chosen(self.examples(gone), cached=False)
        return _share(now, self.expected(gone, untouched)) or 0.0

    @property
    def sequential(self) -> bool:
        return self.learner.accumulate == "sequential"

    def insert(self) -> None:
        if not self.sequential:
            for p in self.items:
                self.tasks[p.card][1].items[p.item.situation] = p.item
            self.learner.rebuild()
            return
        for p in self.items:
            self.tasks[p.card][1].items[p.item.situation] = p.item
            self.learner.apply(p.card, {**NO_CHANGES, "insert": [p.item]})

    def erase(self, gone: list[PoolItem]) -> None:
        for p in gone:
            kb = self.tasks[p.card][1]
            kb.erased.append(kb.items.pop(p.item.situation))
        if not self.sequential:
            self.learner.rebuild()
            return
        for card in dict.fromkeys(p.card for p in gone):
            self.learner.apply(card, {**NO_CHANGES, "erase": [p.item for p in gone if p.card == card]})


def _share(chosen: list[str], wanted: list[str]) -> float | None:
    return sum(c == w for c, w in zip(chosen, wanted)) / len(wanted) if wanted else None


def _returns(bench: _Bench, cards: list[str], episodes: int, max_steps: int, seed: int) -> dict[str, float]:
    out = {}
    for key in cards:
        result, _ = evaluate(bench.tasks[key][0], get_card(key)[0], "bench", None, episodes, seed=eval_seed(seed),
                             max_steps=max_steps, progress=False)
        out[key] = result.mean_return
    return out


def run_capacity(method: str, n: int, sequential: bool = False, seed: int = 0, model: str | None = None,
                 device: str = "auto", dtype: str = "auto", pool: Path | None = None, episodes: int = 0,
                 max_steps: int = 500, options: dict[str, Any] | None = None,
                 origins: list[str] | None = None) -> CapacityResult:
    """Insert ``n`` items drawn (seeded) from the pool with ``method``; measure; erase one and ten; undo all.

    ``options`` set the method's injector options on top of the method's own (``rag`` with ``k: 1``);
    ``origins`` draws from the pool's items of these origins alone.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if n < 1:
        raise UsageError("--items must be at least 1")
    if episodes < 0 or max_steps < 1:
        raise UsageError("--episodes must be at least 0 and --max-steps at least 1")
    start = time.perf_counter()
    if origins is not None and (not origins or set(origins) - set(ORIGINS)):
        raise UsageError(f"origins must be some of {', '.join(ORIGINS)}; got {origins}")
    drawn = load_pool(pool) if pool is not None else build_pool(max(n, POOL_SIZE))
    drawn = [p for p in drawn if origins is None or p.origin in origins]
    if n > len(drawn):
        raise UsageError(f"--items {n} is more than the pool's {len(drawn)} items"
                         + (f" of origins {', '.join(origins)}" if origins is not None else ""))
    rng = random.Random(seed)
    items = rng.sample(drawn, n)
    erasures, left = [], list(items)  # one item, then ten more
    for count in (1, 10):
        if len(left) >= count:
            erasures.append(rng.sample(left, count))
            left = [p for p in left if p not in erasures[-1]]
    torch.manual_seed(seed)
    lm = load_model(model, device, dtype)
    before = model_digest(lm)
    bench = _Bench(lm, items, method, sequential, dict(options or {}))
    untouched = [bench.untouched_batch(gone) for gone in erasures]
    probe = LocalityProbe(lm, locality_prompts("eval"))
    reliability_before = bench.reliability(items) or 0.0
    played = sorted({p.card for p in items if p.origin == "run"}) if episodes else []
    before_returns = _returns(bench, played, episodes, max_steps, seed)

    bench.insert()
    edits = [e for _, e in bench.learner.edits]
    state = bench.hits(items)  # scored once; every share of this state reads it
    reliability = bench.reliability(items, hits=state) or 0.0
    reliability_changed = bench.reliability(items, changed=True, hits=state)
    fresh, reworded = bench.generalization(items)
    known = [x for x in (fresh, reworded) if x is not None]
    locality = probe.measure()
    after_returns = _returns(bench, played, episodes, max_steps, seed)

    erase, left = [], list(items)
    for gone, reference in zip(erasures, untouched):
        left = [p for p in left if p not in gone]
        kept_before = bench.reliability(left, hits=state)
        t0 = time.perf_counter()
        bench.erase(gone)
        seconds = time.perf_counter() - t0
        state = bench.hits(left)
        kept = bench.reliability(left, hits=state)
        erase.append({"erased": len(gone), "restored": bench.restored(gone, reference), "kept_before": kept_before,
                      "kept": kept, "seconds": seconds})
    erase_ok = all(e["restored"] >= RESTORED_MIN
                   and (e["kept"] is None or e["kept_before"] - e["kept"] <= KEPT_DROP_MAX) for e in erase)

    bench.learner.undo_to(0)
    undo_exact = model_digest(lm) == before and all(
        policy.prompt == bench.prompts[k] for k, (policy, _) in bench.tasks.items())
    return CapacityResult(
        method=method, items=n, sequential=sequential, seed=seed, model=lm.name,
        options=dict(options or {}), injector=injector_settings(METHODS[method].strategy, bench.options),
        runtime=lm.runtime,
        origins={o: sum(p.origin == o for p in items) for o in ORIGINS},
        reliability_before=reliability_before, reliability=reliability, reliability_changed=reliability_changed,
        generalization=sum(known) / len(known) if known else None, generalization_fresh=fresh,
        generalization_reworded=reworded,
        locality_kl=locality["locality_kl"], locality_top1=locality["locality_top1"],
        edit_seconds=sum(e.seconds for e in edits), params_touched=max((e.params_touched for e in edits), default=0),
        erase=erase, returns={k: {"before": before_returns[k], "after": after_returns[k]} for k in played},
        erase_ok=erase_ok, undo_exact=undo_exact, wall_seconds=time.perf_counter() - start)
