"""Routed adapters: one adapter per policy on one model, read by its own policy's forwards alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmrl.inject.adapter import AdapterInjector
from llmrl.policy import LLMPolicy
from llmrl.prompts import Prompt
from tests.test_inject_adapter import (  # noqa: F401 - tokenizer: the fixture
    ITEMS,
    LEARN,
    QUICK,
    WORDS,
    chosen,
    digest,
    make_policy,
    structure,
    tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [t for i in ITEMS for t in i.examples]


def rescored(policy: LLMPolicy) -> torch.Tensor:
    """The policy's scores computed afresh (its decision cache dropped)."""
    policy.invalidate()
    return policy.scores(TEXTS)


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding: a matmul's last bit can move with where its input sits in memory."""
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def two_cards(tokenizer) -> tuple[LLMPolicy, LLMPolicy]:  # noqa: F811
    policy = make_policy(tokenizer)
    return policy, LLMPolicy(policy.lm, Prompt("You steer a boat across a lake.", WORDS))


def plain_logits(policy: LLMPolicy) -> torch.Tensor:
    """A forward outside every policy's engine (as the locality probe runs one)."""
    ids = policy.lm.tokenizer("An unrelated sentence about the weather.", return_tensors="pt").input_ids
    with torch.no_grad():
        return policy.lm.model(input_ids=ids).logits


def test_each_policy_reads_its_own_adapter_only(tokenizer, tmp_path):  # noqa: F811
    """A routed edit of one card leaves the other card's scores and every forward outside the policies
    as they were; a joint edit trains one adapter per card, each learning its own items and saved apart."""
    policy, other = two_cards(tokenizer)
    model = policy.lm.model
    before, shape = digest(model), structure(model)
    other0, plain0, mine0 = rescored(other), plain_logits(policy), rescored(policy)
    injector = AdapterInjector(**LEARN, routed=True)
    edit = injector.inject(policy, ITEMS[:2])
    assert chosen(policy, ITEMS[0].examples + ITEMS[1].examples) == [i.action for i in ITEMS[:2] for _ in i.examples]
    assert (rescored(policy) - mine0).abs().max() > 0.1  # the edited card moved; the other did not
    same(rescored(other), other0)
    same(plain_logits(policy), plain0)
    edit.undo()
    assert digest(model) == before and structure(model) == shape

    injector.save_dir = tmp_path
    joint = injector.inject_jointly([(policy, ITEMS[:2]), (other, ITEMS[2:])])
    assert joint.items == ITEMS and joint.info["routed"] and len(joint.info["adapters"]) == 2
    paths = [Path(a["path"]) for a in joint.info["adapters"]]
    assert len(set(paths)) == 2 and all(p.is_file() and p.is_relative_to(tmp_path) for p in paths)
    assert json.dumps(joint.info)  # a run record keeps it
    assert chosen(policy, ITEMS[0].examples) == [ITEMS[0].action] * len(ITEMS[0].examples)
    assert chosen(other, ITEMS[2].examples) == [ITEMS[2].action] * len(ITEMS[2].examples)
    same(plain_logits(policy), plain0)
    joint.undo()
    assert digest(model) == before and structure(model) == shape


def test_sequential_routed_edits_stack_per_card_and_undo_exactly(tokenizer):  # noqa: F811
    """Training one card's adapter further never moves the other card's scores; undoing the first
    adapter leaves the second one working; undoing everything restores the model bit for bit."""
    policy, other = two_cards(tokenizer)
    model = policy.lm.model
    before, shape = digest(model), structure(model)
    injector = AdapterInjector(**QUICK, routed=True)
    first = injector.inject(policy, ITEMS[:1])
    mine, theirs0 = rescored(policy), rescored(other)
    second = injector.inject(other, ITEMS[2:])
    assert not second.info.get("continued")  # the other card gets an adapter of its own
    theirs = rescored(other)
    assert (theirs - theirs0).abs().max() > 1e-3
    same(rescored(policy), mine)
    more = injector.inject(policy, ITEMS[1:2])
    assert more.info["continued"] and more.info["kept_items"] == 1
    assert (rescored(policy) - mine).abs().max() > 1e-3
    same(rescored(other), theirs)
    more.undo()
    same(rescored(policy), mine)
    first.undo()  # the first card's adapter goes; the second card's stays and still acts
    same(rescored(other), theirs)
    second.undo()
    assert digest(model) == before and structure(model) == shape


def test_routed_adapters_refuse_what_they_cannot_do(tokenizer):  # noqa: F811
    with pytest.raises(ValueError, match="routed adapters are lora or ia3"):
        AdapterInjector(kind="bitfit", routed=True)
    policy, other = two_cards(tokenizer)
    edit = AdapterInjector(**QUICK, routed=True).inject(policy, ITEMS[:1])
    with pytest.raises(ValueError, match="merging"):
        edit.info["adapter"].merge()
    with pytest.raises(RuntimeError, match="undo the previous edit"):
        AdapterInjector(**QUICK).inject(other, ITEMS[2:])  # a shared adapter on a routed model
    edit.undo()
    shared = AdapterInjector(**QUICK).inject(policy, ITEMS[:1])
    with pytest.raises(RuntimeError, match="not routed"):
        AdapterInjector(**QUICK, routed=True).inject(other, ITEMS[2:])
    shared.undo()
