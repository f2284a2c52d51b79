"""The item pool of the capacity benchmark: a thousand and more distinct keys across the shipped cards.

The knowledge-editing field judges a method where it breaks: many edits in one
model. A run on one card holds one to fourteen items, so the benchmark draws
its items from a pool built over every card, each item under its own key
(card, situation), of three origins, taken in this order:

- ``run``: the items the committed runs of :data:`RUN_SOURCES` ended with (``runs/*/items.json``),
  one per key, the action most of those runs held, shipped as ``llmrl/data/run_items.json``
  (``scripts/extract_run_items.py`` writes it; a test keeps it equal to the records);
- ``counterfactual``: every other situation that seeded random play reaches, with
  an action the card's table policy would not take there (a uniform draw where the
  card has no table), as CounterFact (Meng et al., 2022) asks a fact's edit for
  an object other than the true one;
- ``observation``: finer keys once the situations run out. One observation text
  is the key (the whole text is the situation), its action drawn as above. These
  items have no fresh observations: their generalization is the reworded prompt
  alone.

Situation items carry ``examples`` (what an injector edits on and reliability
tests) and ``fresh`` observations held apart for generalization. The pool
depends on the cards, the shipped run items and ``seed`` only, never on a
model, so it is rebuilt identically anywhere; :func:`save_pool` writes it as
JSON beside a benchmark's results.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from llmrl.cards import Card, all_cards, get_card, situation_of
from llmrl.errors import UsageError
from llmrl.knowledge import KnowledgeItem, texts_by_situation
from llmrl.oracle import table_policy
from llmrl.policy import RandomPolicy
from llmrl.rollout import rollout

ORIGINS = ("run", "counterfactual", "observation")
#: The committed experiments whose runs' final items start the pool (the control grid kept none).
RUN_SOURCES = ("atari", "cartpole-demo", "continual/flip")
#: The committed runs' items, one per key (:func:`run_items` of the repository's ``reports/``).
RUN_ITEMS = Path(__file__).resolve().parents[1] / "data" / "run_items.json"


@dataclass
class PoolItem:
    """One key of the pool: a card, a knowledge item, and observations held out for generalization."""

    card: str
    item: KnowledgeItem
    origin: str
    fresh: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return self.card, self.item.situation

    def to_json(self) -> dict:
        return {"card": self.card, "origin": self.origin, "situation": self.item.situation,
                "action": self.item.action, "examples": self.item.examples, "fresh": self.fresh}

    @classmethod
    def from_json(cls, d: dict) -> PoolItem:
        item = KnowledgeItem(d["situation"], d["action"], value_gap=0.0, support=len(d["examples"]),
                             source=d["origin"], examples=list(d["examples"]))
        return cls(d["card"], item, d["origin"], list(d["fresh"]))


def _item(situation: str, action: str, origin: str, examples: list[str]) -> KnowledgeItem:
    return KnowledgeItem(situation, action, value_gap=0.0, support=len(examples), source=origin,
                         examples=examples)


def run_items(reports: Path, examples: int = 4) -> dict[tuple[str, str], KnowledgeItem]:
    """Per key, the action most committed runs ended with (ties: the first in word order), and its examples."""
    actions: dict[tuple[str, str], Counter] = {}
    texts: dict[tuple[str, str], dict[str, None]] = {}
    cards = all_cards()
    for path in sorted(p for source in RUN_SOURCES for p in (reports / source).glob("runs/*/items.json")):
        record = path.parent.with_suffix(".json")
        env = json.loads(record.read_text()).get("env") if record.exists() else None
        for d in json.loads(path.read_text())["items"]:
            card = d.get("card", env)
            if card not in cards:
                continue
            key = (card, d["situation"])
            actions.setdefault(key, Counter())[d["action"]] += 1
            texts.setdefault(key, {}).update(dict.fromkeys(d["examples"]))
    out = {}
    for key, counts in sorted(actions.items()):
        best = max(counts.values())
        action = min(a for a, n in counts.items() if n == best)
        out[key] = _item(key[1], action, "run", list(texts[key])[:examples])
    return out


def save_run_items(path: Path, items: dict[tuple[str, str], KnowledgeItem]) -> None:
    path.write_text(json.dumps([{"card": c, **i.to_json()} for (c, _), i in items.items()], indent=1) + "\n")


def load_run_items(path: Path = RUN_ITEMS) -> dict[tuple[str, str], KnowledgeItem]:
    out = {}
    for d in json.loads(path.read_text()):
        out[(d["card"], d["situation"])] = _item(d["situation"], d["action"], "run", d["examples"])
    return out


def _observations(card: Card, seed: int, episodes: int, max_steps: int) -> dict[str, list[str]]:
    """Distinct observation texts per situation under seeded uniform play."""
    played = rollout(RandomPolicy(card.action_words, seed), card, episodes, seed=seed, n_envs=min(episodes, 8),
                     max_steps=max_steps)
    return texts_by_situation(played)


def _counter_action(card: Card, situation: str, rng: random.Random) -> str:
    """An action the card's table would not take in ``situation`` (any action where it has no table)."""
    table = table_policy(card)
    right = table.table.get(situation) if table is not None else None
    return rng.choice([w for w in card.action_words if w != right])


def build_pool(size: int = 1000, seed: int = 0, cards: list[str] | None = None, examples: int = 4,
               fresh: int = 4, episodes: int = 16, max_steps: int = 200) -> list[PoolItem]:
    """``size`` items under distinct keys: run items, then counterfactual situations, then single observations.

    Observation keys are taken from the cards in turn, so that no card fills the pool alone.
    """
    if size < 1:
        raise UsageError("the pool needs at least one item")
    names = sorted(cards) if cards is not None else sorted(all_cards())
    chosen = [get_card(n)[0] for n in names]
    rng = random.Random(seed)
    real = {k: replace(i, examples=i.examples[:examples]) for k, i in load_run_items().items()}
    pool: list[PoolItem] = []
    spare: dict[str, list[str]] = {}
    for card in chosen:
        seen = _observations(card, seed, episodes, max_steps)
        spare[card.key] = []
        for situation, texts in seen.items():
            key = (card.key, situation)
            if key in real:
                used = set(real[key].examples)
                pool.append(PoolItem(card.key, real[key], "run", [t for t in texts if t not in used][:fresh]))
                spare[card.key] += [t for t in texts if t not in used][fresh:]
            else:
                item = _item(situation, _counter_action(card, situation, rng), "counterfactual", texts[:examples])
                pool.append(PoolItem(card.key, item, "counterfactual", texts[examples:examples + fresh]))
                spare[card.key] += texts[examples + fresh:]
        pool += [PoolItem(card.key, item, "run", []) for (c, s), item in real.items()
                 if c == card.key and s not in seen]
    pool.sort(key=lambda p: ORIGINS.index(p.origin))  # stable: run items first, in card order
    queues = {k: iter(v) for k, v in spare.items()}
    while len(pool) < size and queues:
        for key in list(queues):
            text = next(queues[key], None)
            if text is None:
                del queues[key]
                continue
            card = get_card(key)[0]
            action = _counter_action(card, situation_of(text), rng)
            pool.append(PoolItem(key, _item(text, action, "observation", [text]), "observation"))
            if len(pool) == size:
                break
    if len(pool) < size:
        raise UsageError(f"the cards give {len(pool)} distinct keys, fewer than {size}; play more episodes")
    return pool[:size]


def save_pool(path: Path, pool: list[PoolItem]) -> None:
    path.write_text(json.dumps([p.to_json() for p in pool], indent=1))


def load_pool(path: Path) -> list[PoolItem]:
    try:
        return [PoolItem.from_json(d) for d in json.loads(path.read_text())]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read the item pool {path}: {e}") from None
