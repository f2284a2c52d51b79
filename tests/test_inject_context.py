"""The context strategy on the tiny model: rules and demonstrations in the prefix, cases per step."""

from __future__ import annotations

import pytest
import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.inject.context import ContextInjector, select
from llmrl.knowledge import KnowledgeItem

SIT_L, SIT_R = "the pole is falling to the left", "the pole is falling to the right"


def items():
    texts = {s: [f"Cart at center, moving {v} m/s right. Situation: {s}." for v in ("0.1", "0.2", "0.3")]
             for s in (SIT_L, SIT_R)}
    return [KnowledgeItem(SIT_L, "left", 2.0, 40, examples=texts[SIT_L]),
            KnowledgeItem(SIT_R, "right", 1.0, 10, examples=texts[SIT_R])]


def policy(tiny):
    card, _ = get_card("CartPole-v1")
    return make_baseline("zero-shot", card, tiny)


def test_rules_and_demonstrations_go_into_the_cached_prefix_and_undo_restores(tiny):
    p = policy(tiny)
    before_prefix, before = p.decision_prompt("X"), p.scores(["probe text"]).clone()
    edit = ContextInjector(demos=1).inject(p, items())
    prompt = p.decision_prompt("X")
    assert f"- When {SIT_L}: left." in prompt and f"- When {SIT_R}: right." in prompt
    assert prompt.index(SIT_L) < prompt.index(SIT_R)  # strongest evidence first
    assert items()[0].examples[0] in prompt and edit.info["demonstrations"] == 2 and edit.params_touched == 0
    assert not torch.equal(p.scores(["probe text"]), before)
    edit.undo()
    assert p.decision_prompt("X") == before_prefix
    torch.testing.assert_close(p.scores(["probe text"]), before, atol=0, rtol=0)


def test_token_budget_drops_the_weakest_items(tiny):
    p = policy(tiny)
    kept, rules, shots, used = select(p, items(), demos=1, budget=60)
    assert [i.situation for i in kept] == [SIT_L] and used <= 60 and len(shots) == 1
    assert select(p, items(), demos=0, budget=5)[0] == []


def test_retrieved_cases_match_the_situation_and_precede_the_observation(tiny):
    p = policy(tiny)
    ContextInjector(demos=0, k=2).inject(p, items())
    query = f"Cart at center, moving 0.25 m/s right. Situation: {SIT_R}."
    (decorated,) = p.transform([query])
    assert decorated.endswith(query) and decorated.count("Situation: ") == 3
    assert SIT_L not in decorated and decorated.count(p.rendered.suffix + "right") == 2
    assert p.transform(["no situation here"]) == ["no situation here"]
    assert p.scores([query]).shape == (1, 2)


def test_retrieval_alone_stores_every_example_and_looks_up_its_own_text(tiny):
    p = policy(tiny)
    before_prefix = p.decision_prompt("X")
    query = f"Cart at left, moving 0.4 m/s left. Situation: {SIT_L}."
    # an item keyed by one whole observation is retrieved by that observation, and its situation's cases not:
    # the finer key is an exception to the coarser one
    single = KnowledgeItem(query, "right", 0.0, 1, examples=[query])
    edit = ContextInjector(rules=False, k=2).inject(p, [*items(), single])
    assert p.decision_prompt("X") == before_prefix  # no rules, no demonstrations
    assert (edit.info["rules"], edit.info["demonstrations"], edit.info["cases"]) == (0, 0, 7)
    (decorated,) = p.transform([query])
    assert decorated == p.rendered.turn(query, "right") + query
    # and by no other observation of the situation, which gets two of the situation's cases
    other = f"Cart at right, moving 0.4 m/s left. Situation: {SIT_L}."
    (shown,) = p.transform([other])
    assert p.rendered.turn(query, "right") not in shown and shown.count(p.rendered.suffix + "left") == 2
    edit.undo()
    assert p.transform is None and p.decision_prompt("X") == before_prefix
    # with rules, a text never retrieves itself (its item's rule and demonstrations hold it): the situation's
    ContextInjector(demos=0, k=2).inject(p, [*items(), single])
    (shown,) = p.transform([query])
    assert p.rendered.turn(query, "right") not in shown and shown.count(p.rendered.suffix + "left") == 2


def test_fill_shows_the_cases_found_again_until_k_are_shown(tiny):
    p = policy(tiny)
    query = f"Cart at left, moving 0.4 m/s left. Situation: {SIT_L}."
    single = KnowledgeItem(query, "right", 0.0, 1, examples=[query])
    ContextInjector(rules=False, k=3, fill=True).inject(p, [single])
    assert p.transform([query]) == [p.rendered.turn(query, "right") * 3 + query]
    # a situation's three cases, five shown: all three, then the two nearest again, the nearest last
    q = policy(tiny)
    ContextInjector(rules=False, k=5, fill=True).inject(q, items())
    (text,) = q.transform([f"Cart at center, moving 0.25 m/s right. Situation: {SIT_R}."])
    turns = [q.rendered.turn(t, "right") for t in items()[1].examples]
    assert text.count("Situation: ") == 6 and all(text.count(t) in (1, 2) for t in turns)
    assert sum(text.count(t) for t in turns) == 5 and text.count(turns[0] + turns[0]) == 0


def test_a_sequential_retrieval_edit_keeps_the_cases_in_force_and_undo_returns_to_them(tiny):
    p = policy(tiny)
    left, right = items()
    first = ContextInjector(rules=False, k=1).inject(p, [left])
    query = left.examples[0]
    shown = p.transform([query])
    assert shown == [p.rendered.turn(query, "left") + query]
    moved = KnowledgeItem(SIT_L, "right", 1.0, 5, examples=left.examples)  # the same key, another action
    second = ContextInjector(rules=False, k=1).inject(p, [right])
    assert p.transform([query]) == shown  # the earlier item's case is still retrieved
    third = ContextInjector(rules=False, k=1).inject(p, [moved])
    assert p.transform([query]) == [p.rendered.turn(query, "right") + query]  # the newer item replaced it
    assert p.transform([right.examples[0]]) == [p.rendered.turn(right.examples[0], "right") + right.examples[0]]
    third.undo()
    assert p.transform([query]) == shown
    second.undo()
    first.undo()
    assert p.transform is None


def test_retrieval_alone_needs_k():
    with pytest.raises(ValueError, match="needs k >= 1"):
        ContextInjector(rules=False, k=0)
