"""Sequential and rebuilt accumulation of edits (llmrl/learner.py) on a fresh tiny model per test."""

from __future__ import annotations

import pytest
import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.config import LoopConfig
from llmrl.errors import UsageError
from llmrl.inject.adapter import AdapterInjector
from llmrl.inject.context import ContextInjector
from llmrl.inject.weights import WeightsInjector
from llmrl.knowledge import KnowledgeBase, KnowledgeItem
from llmrl.learner import Learner
from tests.helpers import first_texts_by_situation, fresh_tiny
from tests.test_inject_sequence import fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")

LEFT, RIGHT = "the pole is falling to the left", "the pole is falling to the right"
INJECTORS = {"context": lambda: ContextInjector(demos=1), "adapter": lambda: AdapterInjector(steps=3, batch_size=4),
             "weights": lambda: WeightsInjector(steps=3, stats_tokens=256, stats_prompts=8)}


@pytest.fixture
def setup(monkeypatch, tmp_path):
    lm = fresh_tiny(5, "tiny-learner")
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path))  # fresh key statistics for this tiny model
    card, _ = get_card("CartPole-v1")
    return lm, make_baseline("zero-shot", card, lm), first_texts_by_situation("CartPole-v1", 30)


def item(texts, situation: str, action: str) -> KnowledgeItem:
    return KnowledgeItem(situation, action, 1.0, 20, examples=texts[situation][:4])


def changes(**kinds: list[KnowledgeItem]) -> dict[str, list[KnowledgeItem]]:
    return {kind: kinds.get(kind, []) for kind in ("insert", "modify", "retain", "erase")}


def learner(policy, strategy: str, accumulate: str) -> tuple[Learner, KnowledgeBase]:
    kb = KnowledgeBase()
    cfg = LoopConfig(env="CartPole-v1", strategy=strategy)
    return Learner({"CartPole-v1": (policy, kb)}, INJECTORS[strategy](), cfg,
                   accumulate), kb


@pytest.mark.parametrize("strategy", sorted(INJECTORS))
def test_sequential_edits_stack_and_an_erased_item_is_taken_out(setup, strategy):
    lm, policy, texts = setup
    start, probe = fingerprint(lm.model), [t for s in (LEFT, RIGHT) for t in texts[s][:4]]
    untouched = policy.scores(probe).clone()
    ln, kb = learner(policy, strategy, "sequential")
    a, b = item(texts, LEFT, "right"), item(texts, RIGHT, "left")
    kb.items[LEFT] = a
    ln.apply("CartPole-v1", changes(insert=[a]))
    kb.items[RIGHT] = b
    ln.apply("CartPole-v1", changes(insert=[b]))
    assert [e.items for _, e in ln.edits] == [[a], [b]]  # the second edit carries only the new item
    assert not torch.equal(policy.scores(probe), untouched)
    assert ln.model_edited == (strategy != "context")  # context edits change prompts, never a parameter

    # a modified item is edited on top of the one it replaces
    c = item(texts, RIGHT, "right")
    kb.items[RIGHT] = c
    ln.apply("CartPole-v1", changes(erase=[b], modify=[c]))
    assert [e.items for _, e in ln.edits] == [[a], [b], [c]] and ln.replayed == 0

    # an item erased with nothing in its place: the edits back to the one that wrote it are undone, and
    # the items of those edits still held are injected again
    del kb.items[LEFT]
    ln.apply("CartPole-v1", changes(erase=[a]))
    assert [e.items for _, e in ln.edits] == [[c]] and ln.replayed == 1
    only_c = policy.scores(probe).clone()
    ln.undo_to(0)
    assert fingerprint(lm.model) == start
    torch.testing.assert_close(policy.scores(probe), untouched, atol=0, rtol=0)
    assert not ln.model_edited
    # what is left is exactly c injected alone into the untouched model
    fresh = INJECTORS[strategy]().inject(policy, [c])
    torch.testing.assert_close(policy.scores(probe), only_c, atol=0, rtol=0)
    fresh.undo()
    assert fingerprint(lm.model) == start


def test_erasing_items_of_two_cards_at_once_undoes_each_once(setup):
    lm, policy, texts = setup
    other = make_baseline("zero-shot", get_card("CartPole-v1")[0], lm)  # a second card's policy on the model
    kb, kb2 = KnowledgeBase(), KnowledgeBase()
    ln = Learner({"one": (policy, kb), "two": (other, kb2)}, INJECTORS["context"](),
                 LoopConfig(env="CartPole-v1", strategy="context"), "sequential")
    a, b, c = item(texts, LEFT, "right"), item(texts, RIGHT, "left"), item(texts, RIGHT, "right")
    for key, base, it in (("two", kb2, b), ("one", kb, a), ("one", kb, c)):
        base.items[it.situation] = it
        ln.apply(key, changes(insert=[it]))
    # erase b (card two, oldest) and c (card one, newest) together, as the capacity benchmark does: the
    # first call undoes back to b, which takes c's edit out too; the second finds nothing left to undo
    del kb2.items[RIGHT], kb.items[RIGHT]
    ln.apply("two", changes(erase=[b]))
    ln.apply("one", changes(erase=[c]))
    assert [e.items for _, e in ln.edits] == [[a]] and ln.replayed == 1


def test_rebuild_keeps_one_edit_of_every_item_held(setup):
    lm, policy, texts = setup
    start = fingerprint(lm.model)
    ln, kb = learner(policy, "weights", "rebuild")
    a, b = item(texts, LEFT, "right"), item(texts, RIGHT, "left")
    kb.items[LEFT] = a
    ln.apply("CartPole-v1", changes(insert=[a]))
    kb.items[RIGHT] = b
    ln.apply("CartPole-v1", changes(insert=[b]))
    assert len(ln.edits) == 1 and ln.edit.items == [a, b]
    del kb.items[LEFT], kb.items[RIGHT]
    ln.apply("CartPole-v1", changes(erase=[a, b]))
    assert ln.edits == [] and fingerprint(lm.model) == start


def test_an_unknown_accumulate_mode_is_refused(setup):
    with pytest.raises(UsageError, match="unknown accumulate mode 'stacked'"):
        learner(setup[1], "context", "stacked")


@pytest.mark.parametrize("strategy", ["adapter", "weights"])
def test_rebuild_across_cards_is_one_joint_edit(setup, strategy):
    lm, cartpole, texts = setup
    card, _ = get_card("LunarLander-v3")
    lander = make_baseline("zero-shot", card, lm)
    lander_texts = first_texts_by_situation("LunarLander-v3", 30)
    situation = max(lander_texts, key=lambda s: len(lander_texts[s]))
    start = fingerprint(lm.model)
    probes = {"cartpole": (cartpole, texts[LEFT][:4]), "lander": (lander, lander_texts[situation][:4])}
    before = {name: policy.scores(t).clone() for name, (policy, t) in probes.items()}
    kbs = {"CartPole-v1": KnowledgeBase(), "LunarLander-v3": KnowledgeBase()}
    ln = Learner({"CartPole-v1": (cartpole, kbs["CartPole-v1"]), "LunarLander-v3": (lander, kbs["LunarLander-v3"])},
                 INJECTORS[strategy](), LoopConfig(env="CartPole-v1", strategy=strategy), "rebuild")
    a = item(texts, LEFT, "right")
    b = KnowledgeItem(situation, "main engine", 1.0, 20, examples=lander_texts[situation][:4])
    kbs["CartPole-v1"].items[LEFT] = a
    kbs["LunarLander-v3"].items[situation] = b
    ln.apply("LunarLander-v3", changes(insert=[b]))
    assert [(k, e.items) for k, e in ln.edits] == [("*", [a, b])]  # one edit, each item in its card's prompt
    for name, (policy, t) in probes.items():  # both policies see the edited model (their caches were dropped)
        assert not torch.equal(policy.scores(t), before[name]), name
    ln.undo_to(0)
    assert fingerprint(lm.model) == start
    for name, (policy, t) in probes.items():
        torch.testing.assert_close(policy.scores(t), before[name], atol=0, rtol=0)


@pytest.mark.parametrize("accumulate", ["sequential", "rebuild"])
def test_routed_adapters_keep_each_cards_edits_on_its_card(setup, accumulate):
    """With one adapter per card, a second card's edit leaves the first card's scores exactly as they were,
    in either mode; undoing everything restores the model."""
    lm, cartpole, texts = setup
    card, _ = get_card("LunarLander-v3")
    lander = make_baseline("zero-shot", card, lm)
    lander_texts = first_texts_by_situation("LunarLander-v3", 30)
    situation = max(lander_texts, key=lambda s: len(lander_texts[s]))
    start, probe = fingerprint(lm.model), texts[LEFT][:4]
    kbs = {"CartPole-v1": KnowledgeBase(), "LunarLander-v3": KnowledgeBase()}
    ln = Learner({"CartPole-v1": (cartpole, kbs["CartPole-v1"]), "LunarLander-v3": (lander, kbs["LunarLander-v3"])},
                 AdapterInjector(steps=3, batch_size=4, routed=True), LoopConfig(env="CartPole-v1", strategy="adapter"),
                 accumulate)
    a = item(texts, LEFT, "right")
    kbs["CartPole-v1"].items[LEFT] = a
    def rescored(policy, texts):  # afresh; equal up to float rounding (a matmul's last bit moves with alignment)
        policy.invalidate()
        return policy.scores(texts)

    untouched = rescored(lander, lander_texts[situation][:4])
    ln.apply("CartPole-v1", changes(insert=[a]))
    edited = rescored(cartpole, probe)
    torch.testing.assert_close(rescored(lander, lander_texts[situation][:4]), untouched, atol=1e-5, rtol=0)
    b = KnowledgeItem(situation, "main engine", 1.0, 20, examples=lander_texts[situation][:4])
    kbs["LunarLander-v3"].items[situation] = b
    ln.apply("LunarLander-v3", changes(insert=[b]))
    assert (rescored(lander, lander_texts[situation][:4]) - untouched).abs().max() > 1e-3
    torch.testing.assert_close(rescored(cartpole, probe), edited, atol=1e-5, rtol=0)
    ln.undo_to(0)
    assert fingerprint(lm.model) == start
