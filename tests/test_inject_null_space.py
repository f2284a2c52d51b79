"""AlphaEdit's null-space projected MEMIT update (WeightsInjector(null_space=True)) on fresh tiny models of both
layouts; its edit of trained ones is in test_inject_weights.py."""

from __future__ import annotations

import pytest
import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.errors import UsageError
from llmrl.inject.weights import WeightsInjector
from llmrl.inject.weights.layout import find_layout, resolve_layers
from llmrl.knowledge import KnowledgeItem
from tests.helpers import first_texts_by_situation, fresh_tiny
from tests.test_inject_sequence import fingerprint
from tests.test_inject_weights import new_model

pytestmark = pytest.mark.usefixtures("one_thread")

# the tiny model's keys are short (hidden size 64): at the default ridge (10) its update is so small that the
# float32 rounding of the stored weights is 1.5e-4 of it, so the projection is checked at a ridge of 1
OPTIONS = {"steps": 3, "stats_tokens": 256, "stats_prompts": 8, "null_space": True, "null_space_l2": 1.0}


@pytest.fixture(params=["llama", "gpt2"])
def setup(request, monkeypatch, tmp_path, tiny):
    """A fresh random model of each layout: GPT-2 stores its MLP output projection transposed (Conv1D)."""
    lm = fresh_tiny(7, "tiny-null-space") if request.param == "llama" else new_model(tiny, "gpt2", seed=7)
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path))
    card, _ = get_card("CartPole-v1")
    texts = first_texts_by_situation("CartPole-v1", 30)
    items = [KnowledgeItem(s, a, 1.0, 20, examples=texts[s][:4])
             for s, a in (("the pole is falling to the left", "right"), ("the pole is falling to the right", "left"))]
    return lm, make_baseline("zero-shot", card, lm), items


def kept_share(injector, policy, items, lm) -> float:
    """The largest share of an edit's update that falls on the preserved keys' directions, over its layers."""
    layout = find_layout(lm.model)
    layers = resolve_layers(None, len(layout.blocks), "memit")
    before = {layer: layout.projections[layer].weight.detach().clone() for layer in layers}
    edit = injector.inject(policy, items)
    moments, _ = injector.statistics(policy, layout, layers, items)
    share = 0.0
    for layer in layers:
        delta = (layout.projections[layer].weight - before[layer]).double()
        delta = delta.T if layout.transposed else delta  # [hidden, intermediate]
        values, vectors = torch.linalg.eigh(moments[layer].double())
        kept = vectors[:, values >= 1e-2 * values.max()]
        assert kept.shape[1] > 0 and delta.abs().max() > 0
        share = max(share, float((delta @ kept).norm() / delta.norm()))
    edit.undo()
    return share


def test_the_update_leaves_the_preserved_keys_outputs_where_they_were(setup):
    lm, policy, items = setup
    # projected: only the float32 rounding of the stored weights is left on the kept directions
    assert kept_share(WeightsInjector(**OPTIONS), policy, items[:1], lm) < 1e-4
    # MEMIT's own update is spread over them
    assert kept_share(WeightsInjector(**{**OPTIONS, "null_space": False}), policy, items[:1], lm) > 1e-2


def test_earlier_edits_keys_are_kept_and_undo_forgets_them(setup):
    lm, policy, items = setup
    start = fingerprint(lm.model)
    injector = WeightsInjector(**OPTIONS)
    first = injector.inject(policy, items[:1])
    assert set(injector._edited)  # the first edit's keys are remembered for the next
    after_first = fingerprint(lm.model)
    second = injector.inject(policy, items[1:])
    after_second = fingerprint(lm.model)
    second.undo()
    assert fingerprint(lm.model) == after_first
    again = injector.inject(policy, items[1:])  # the same edit on the same state: bit-identical
    assert fingerprint(lm.model) == after_second
    again.undo()
    first.undo()
    assert fingerprint(lm.model) == start and injector._edited == {}


def test_null_space_needs_memit():
    with pytest.raises(UsageError, match="null_space projects MEMIT"):
        WeightsInjector(method="rome", null_space=True)


def test_an_item_edited_again_leaves_the_kept_keys(setup):
    """Kept, a superseded key would hold its old answer against the new edit of the same key (the effect on
    the default model: scripts/sequential_memit_flip.py)."""
    lm, policy, items = setup
    injector = WeightsInjector(**OPTIONS)
    mirrored = items[0]
    back = KnowledgeItem(mirrored.situation, "left", 1.0, 20, examples=mirrored.examples)
    edits = [injector.inject(policy, [mirrored]), injector.inject(policy, [items[1]])]
    first = {layer: dict(keys) for layer, keys in injector._edited.items()}
    edits.append(injector.inject(policy, [back]))
    both = {(id(policy), mirrored.situation), (id(policy), items[1].situation)}
    assert first and all(set(keys) == both for keys in injector._edited.values())  # two keys, not three
    for layer, keys in injector._edited.items():
        assert torch.equal(keys[(id(policy), items[1].situation)], first[layer][(id(policy), items[1].situation)])
    edits.pop().undo()  # undoing the re-edit brings the superseded key back
    assert all(torch.equal(injector._edited[layer][o], first[layer][o]) for layer in first for o in both)
    for edit in reversed(edits):
        edit.undo()
    assert injector._edited == {}

