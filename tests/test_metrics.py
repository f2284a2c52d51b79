"""The edit metrics' definitions: reliability, generalization and locality."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

import llmrl.metrics as metrics
from llmrl.knowledge import KnowledgeItem
from llmrl.metrics import LocalityProbe, environment_prompts, generalization, locality_prompts, reliability
from llmrl.prompts import Prompt

WORDS = ["left", "right"]


class TablePolicy:
    """Greedy choice read from a table per prompt style: text -> action word."""

    def __init__(self, default: dict[str, str], reworded: dict[str, str]):
        self.action_words, self.tables = WORDS, {"default": default, "reworded": reworded}
        self.prompt = Prompt("Balance the pole.", WORDS)

    @contextlib.contextmanager
    def using_prompt(self, prompt: Prompt):
        original, self.prompt = self.prompt, prompt
        try:
            yield self
        finally:
            self.prompt = original

    def scores(self, texts: list[str]) -> torch.Tensor:
        table = self.tables[self.prompt.style]
        return torch.tensor([[0.0, -1.0] if table[t] == "left" else [-1.0, 0.0] for t in texts])


def test_reliability_and_generalization_count_greedy_agreement():
    items = [KnowledgeItem("falling left", "left", 1.0, 4, examples=["a", "b", "c", "d"]),
             KnowledgeItem("falling right", "right", 1.0, 2, examples=["e", "f"])]
    default = {"a": "left", "b": "left", "c": "right", "d": "left", "e": "right", "f": "right",
               "g": "left", "h": "right", "i": "right"}
    reworded = {**default, "a": "right", "b": "right"}
    policy = TablePolicy(default, reworded)
    assert reliability(policy, items) == pytest.approx(5 / 6)
    # fresh texts: g (left, right), h (left, wrong), i (right, right); "a" is a source text and is skipped
    fresh = {"falling left": ["g", "h", "a"], "falling right": ["i"]}
    assert generalization(policy, items, fresh) == pytest.approx((2 / 3 + 3 / 6) / 2)
    assert policy.prompt.style == "default"  # the reworded prompt is put back
    assert reliability(policy, []) is None and generalization(policy, [], {}) is None


def test_locality_probe_is_zero_untouched_and_sees_an_edit_land(tiny):
    prompts = locality_prompts("eval")[:6]
    probe = LocalityProbe(tiny, prompts, batch_size=4)  # two batches, left-padded
    same = probe.measure()
    assert same["locality_kl"] == pytest.approx(0.0, abs=1e-6) and same["locality_top1"] == 1.0
    assert same["locality_prompts"] == 6
    weight = tiny.model.lm_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
        changed = probe.measure()
        # KL(before || after) of one prompt from a plain, unpadded forward agrees with the probe's
        ids = tiny.tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            after = torch.log_softmax(tiny.model(ids).logits[0, -1].float(), -1)
        by_hand = float((probe.before[0].exp() * (probe.before[0] - after)).sum())
        assert by_hand > 0
        rows = probe._logprobs()
        assert float((probe.before[0].exp() * (probe.before[0] - rows[0])).sum()) == pytest.approx(by_hand, rel=1e-3)
        assert changed["locality_kl"] > 1e-4
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert probe.measure()["locality_kl"] == pytest.approx(0.0, abs=1e-6)


def test_shipped_locality_prompts_are_enough_and_disjoint():
    evaluation, train = locality_prompts("eval"), locality_prompts("train")
    assert len(evaluation) >= 200 and not set(evaluation) & set(train)


def test_environment_prompts_leave_out_uninstalled_environments(tiny, monkeypatch):
    cards = metrics.all_cards()
    broken = cards["Acrobot-v1"]

    def missing(*args, **kwargs):
        raise ImportError("no module named 'pretend_physics'")

    whole = environment_prompts(tiny.tokenizer, exclude="CartPole-v1", per_card=1)
    monkeypatch.setattr(broken, "make_env", missing)
    with pytest.warns(UserWarning, match="Acrobot-v1"):
        prompts = environment_prompts(tiny.tokenizer, exclude="CartPole-v1", per_card=1)
    assert len(prompts) == len(whole) - 1
    assert not any("Links at" in p for p in prompts) and any("Car at" in p for p in prompts)


def test_a_missing_atari_extra_leaves_the_atari_cards_out_of_the_probe(tiny, monkeypatch):
    """Without OCAtari a control run must still build its locality probe (a real failure once)."""
    from llmrl.errors import MissingExtra, UsageError

    monkeypatch.setitem(sys.modules, "ocatari", None)  # import ocatari.ram now raises ImportError
    monkeypatch.setitem(sys.modules, "ocatari.ram", None)
    atari = [key for key, card in metrics.all_cards().items() if card.family == "atari"]
    assert atari
    with pytest.raises(MissingExtra, match=r"pip install -e '\.\[atari\]'") as caught:
        metrics.all_cards()[atari[0]].make_env()
    assert isinstance(caught.value, UsageError)  # the command line prints it on one line
    with pytest.warns(UserWarning, match=r"leaves out \d+ cards: .*ALE/Pong-v5"):
        prompts = environment_prompts(tiny.tokenizer, exclude="CartPole-v1", per_card=1)
    assert len(prompts) == len(metrics.all_cards()) - 1 - len(atari)


def test_a_limited_probe_spreads_over_shipped_and_environment_prompts(tiny):
    from llmrl.cards import get_card

    probe = LocalityProbe.for_card(tiny, get_card("CartPole-v1")[0], limit=20)
    assert len(probe.prompts) == 20 and probe.unchanged()["locality_prompts"] == 20
    assert probe.prompts[0] == locality_prompts("eval")[0] and "Situation:" in probe.prompts[-1]
    assert probe.measure()["locality_kl"] == pytest.approx(probe.unchanged()["locality_kl"], abs=1e-6)
