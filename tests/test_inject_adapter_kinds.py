"""The adapter's other families, IA3 and prefix tuning (additive PET) and BitFit (specification PET), on both
layouts."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft.tuners.ia3 import IA3Layer
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from llmrl.inject.adapter import AdapterInjector
from llmrl.models import LoadedModel
from llmrl.policy import LLMPolicy
from llmrl.prompts import Prompt
from tests.test_inject_adapter import (  # noqa: F401 - tokenizer: the fixture
    ALL_TEXTS,
    ITEMS,
    LEARN,
    WORDS,
    chosen,
    digest,
    make_policy,
    structure,
    tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = dict(steps=4, lr=5e-2)


def gpt2_policy(tok) -> LLMPolicy:
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    return LLMPolicy(LoadedModel(model, tok, "gpt2-tiny", torch.device("cpu"), torch.float32),
                     Prompt("You drive a car out of a valley.", WORDS))


@pytest.mark.parametrize("layout", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["ia3", "bitfit", "prefix"])
def test_each_kind_lands_switches_merges_saves_and_undoes_exactly(tokenizer, tmp_path, kind, layout):  # noqa: F811
    policy = make_policy(tokenizer) if layout == "llama" else gpt2_policy(tokenizer)
    model = policy.lm.model
    before, shape, scores0 = digest(model), structure(model), policy.scores(ALL_TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft's fan_in_fan_out warning for Conv1D
        edit = AdapterInjector(kind=kind, **QUICK, save_dir=tmp_path).inject(policy, ITEMS)
    handle = edit.info["adapter"]
    edited = policy.scores(ALL_TEXTS)
    assert not torch.allclose(edited, scores0) and edit.info["kind"] == kind
    if kind != "prefix":
        assert all(".mlp." in n for n in edit.info["target_modules"])
    if kind == "ia3":
        wrapped = [n for n, m in model.named_modules() if isinstance(m, IA3Layer)]
        assert wrapped and all(".mlp." in n for n in wrapped)
    else:  # BitFit and the prefix leave every weight as it was
        assert digest(model) == before
        assert edit.params_touched == sum(t.numel() for t in load_file(tmp_path / "adapter_model.safetensors")
                                          .values())
    assert edit.params_touched > 0 and edit.info["path"] == str(tmp_path / "adapter_model.safetensors")
    handle.set_enabled(False)
    torch.testing.assert_close(policy.scores(ALL_TEXTS), scores0, atol=1e-6, rtol=0)
    handle.set_enabled(True)
    torch.testing.assert_close(policy.scores(ALL_TEXTS), edited, atol=1e-6, rtol=0)
    if kind == "prefix":  # only the policy's prompts read it: the model answers any other text as before
        ids = torch.tensor([tokenizer("The weather today is").input_ids])
        with torch.no_grad(), handle.tuner.disabled():
            plain = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, plain)
        with pytest.raises(ValueError, match="no weights to merge into"):
            handle.merge()
    else:
        handle.merge()
        assert digest(model) != before
        torch.testing.assert_close(policy.scores(ALL_TEXTS), edited, atol=1e-4, rtol=0)
    edit.undo()
    assert digest(model) == before and structure(model) == shape
    torch.testing.assert_close(policy.scores(ALL_TEXTS), scores0, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["ia3", "bitfit", "prefix"])
def test_each_kind_learns_the_items_and_trains_further(tokenizer, kind):  # noqa: F811
    """IA3 learns the three items; BitFit and the prefix one item. Neither changes how the random tiny model's
    layers tell the situations apart: on all three items BitFit's loss stays near ln 3, and the prefix gets 9 or
    10 of the 12 examples right."""
    policy = make_policy(tokenizer)
    before = digest(policy.lm.model)
    items = ITEMS if kind == "ia3" else ITEMS[2:]
    texts = [t for i in items for t in i.examples]
    assert chosen(policy, texts) != [i.action for i in items for _ in i.examples]
    injector = AdapterInjector(kind=kind, **{**LEARN, "steps": 150, "lr": 5e-2})
    edit = injector.inject(policy, items)
    assert chosen(policy, texts) == [i.action for i in items for _ in i.examples]
    trained = [p.detach().clone() for p in edit.info["adapter"].tuner.parameters()]
    more = injector.inject(policy, ITEMS[:1])  # sequential: the same adapter, trained further
    assert more.info["continued"]
    more.undo()
    assert all(torch.equal(a, b) for a, b in zip(edit.info["adapter"].tuner.parameters(), trained))
    edit.undo()
    assert digest(policy.lm.model) == before


def test_a_bad_kind_is_refused():
    with pytest.raises(ValueError, match="bad adapter kind 'prompt'"):
        AdapterInjector(kind="prompt")
