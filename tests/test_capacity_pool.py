"""The capacity benchmark's item pool: distinct keys, counterfactual actions, reproducible, shipped run items."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrl.capacity.pool import ORIGINS, build_pool, load_pool, load_run_items, run_items, save_pool
from llmrl.cards import get_card
from llmrl.errors import UsageError
from llmrl.oracle import table_policy

ROOT = Path(__file__).resolve().parents[1]
CARDS = ["CartPole-v1", "MountainCar-v0"]


def test_the_pool_has_distinct_keys_of_three_origins_in_order(tmp_path):
    pool = build_pool(120, seed=3, cards=CARDS, episodes=8, max_steps=60)
    assert len(pool) == 120 and len({p.key for p in pool}) == 120
    origins = [ORIGINS.index(p.origin) for p in pool]
    assert origins == sorted(origins) and set(origins) == {0, 1, 2}
    shipped = load_run_items()
    for p in pool:
        card = get_card(p.card)[0]
        assert p.item.action in card.action_words
        assert set(p.fresh).isdisjoint(p.item.examples)
        if p.origin == "run":
            assert p.item.action == shipped[p.key].action
        elif p.origin == "counterfactual":
            assert p.item.action != table_policy(card).table[p.item.situation]
            assert 1 <= len(p.item.examples) <= 4
            assert all(t.endswith(f"Situation: {p.item.situation}.") for t in p.item.examples + p.fresh)
        else:  # one observation is its own key; its action is not the table's for its situation
            assert p.item.examples == [p.item.situation] and p.fresh == []
            situation = p.item.situation.rsplit("Situation: ", 1)[1].rstrip(".")
            assert p.item.action != table_policy(card).table[situation]
    # the observation keys come from the cards in turn
    observed = [p.card for p in pool if p.origin == "observation"]
    assert observed[:4] == ["CartPole-v1", "MountainCar-v0"] * 2


def test_the_pool_is_reproducible_and_round_trips(tmp_path):
    a = build_pool(40, seed=1, cards=CARDS, episodes=4, max_steps=40)
    b = build_pool(40, seed=1, cards=CARDS, episodes=4, max_steps=40)
    assert [p.to_json() for p in a] == [p.to_json() for p in b]
    c = build_pool(40, seed=2, cards=CARDS, episodes=4, max_steps=40)
    assert [p.to_json() for p in a] != [p.to_json() for p in c]
    save_pool(tmp_path / "pool.json", a)
    assert [p.to_json() for p in load_pool(tmp_path / "pool.json")] == [p.to_json() for p in a]


def test_pool_errors(tmp_path):
    with pytest.raises(UsageError, match="fewer than 100000"):
        build_pool(100_000, cards=["CartPole-v1"], episodes=1, max_steps=10)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="cannot read the item pool"):
        load_pool(tmp_path / "bad.json")


def test_the_shipped_run_items_are_those_of_the_committed_runs():
    shipped = load_run_items()
    rebuilt = run_items(ROOT / "reports")
    assert shipped.keys() == rebuilt.keys() and len(shipped) >= 30
    assert all(shipped[k].action == rebuilt[k].action and shipped[k].examples == rebuilt[k].examples
               for k in shipped)


def test_the_committed_pool_is_the_seeded_pool():
    """reports/edits/pool.json, which the capacity grid reads, is what build_pool makes today."""
    from llmrl.capacity.bench import POOL_SIZE

    shipped = load_pool(ROOT / "reports" / "edits" / "pool.json")
    assert [p.to_json() for p in build_pool(POOL_SIZE)] == [p.to_json() for p in shipped]
