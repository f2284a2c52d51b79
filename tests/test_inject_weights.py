"""The weights strategy (ROME / MEMIT) on tiny random models of both layouts, plus a real-model check.

A random model at the usual 0.02 initialisation attends almost uniformly, so
a shift of the residual at the subject barely reaches the answer position 7
tokens later and no edit can move the answer. The tiny models here have
their attention sharpened (query/key and value/output weights scaled), which
gives the edit the path a trained model has; the hyper-parameters drop the
norm limits that are tuned for the real model.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          PreTrainedModel)

import llmrl.inject.weights as weights
from llmrl.baselines import make_baseline
from llmrl.cards import Card, get_card
from llmrl.errors import UsageError
from llmrl.inject.weights import WeightsInjector, find_layout, resolve_layers, subject_position
from llmrl.knowledge import KnowledgeItem
from llmrl.models import LoadedModel
from llmrl.policy import LLMPolicy

LEFT, RIGHT = "the pole is falling to the left", "the pole is falling to the right"
DRIFT_LEFT, DRIFT_RIGHT = "the pole is balanced and the cart drifts left", "the pole is balanced and the cart drifts right"
#: Hyper-parameters for the sharpened tiny models: a small corpus, no norm limits.
TINY = dict(stats_tokens=256, clamp=10.0, weight_decay=0.0, mom2_weight=10.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch, tiny):
    """Statistics go to a fresh cache per test (the tiny tokenizer is loaded before the switch)."""
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sharpen(model: PreTrainedModel) -> PreTrainedModel:
    """Scale attention so that a position can be attended to (see the module docstring)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj")):
                param.mul_(10)
            elif any(k in name for k in ("v_proj", "o_proj")):
                param.mul_(4)
            elif "c_attn.weight" in name:  # GPT-2: query, key and value side by side
                width = param.shape[1] // 3
                param[:, :2 * width].mul_(10)
                param[:, 2 * width:].mul_(4)
            elif "attn.c_proj.weight" in name:
                param.mul_(4)
    return model.eval()


def llama(tiny: LoadedModel, seed: int = 0) -> LoadedModel:
    """A fresh tiny Llama (what ``tiny_model(seed)`` builds, from the loaded config: the cache is switched)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny.model.config, dtype=torch.float32)
    return LoadedModel(sharpen(model), tiny.tokenizer, f"tiny-sharp-{seed}", torch.device("cpu"), torch.float32)


def gpt2(tiny: LoadedModel, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tiny.tokenizer))
    return LoadedModel(sharpen(GPT2LMHeadModel(config)), tiny.tokenizer, f"tiny-gpt2-{seed}", torch.device("cpu"),
                       torch.float32)


_TEXTS: dict[str, list[str]] = {}


def cartpole_texts() -> dict[str, list[str]]:
    """Distinct CartPole observation texts per situation from seeded random episodes."""
    if not _TEXTS:
        card, _ = get_card("CartPole-v1")
        env = card.make_env()
        gen = torch.Generator().manual_seed(0)
        for episode in range(60):
            obs, _ = env.reset(seed=episode)
            done = False
            while not done:
                text, situation = card.text(obs, env)
                bucket = _TEXTS.setdefault(situation, [])
                if text not in bucket:
                    bucket.append(text)
                obs, _, terminated, truncated, _ = env.step(int(torch.randint(2, (1,), generator=gen)))
                done = terminated or truncated
    return _TEXTS


def policy_for(lm: LoadedModel) -> LLMPolicy:
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, lm)
    assert isinstance(policy, LLMPolicy)
    return policy


def opposite_items(policy: LLMPolicy, situations: list[str], n: int = 8) -> list[KnowledgeItem]:
    """One item per situation whose action is the one the unedited policy picks least."""
    items = []
    for situation in situations:
        examples = cartpole_texts()[situation][:n]
        least = int(policy.scores(examples).argmax(1).float().mean().round())  # 1 if mostly 'right'
        action = policy.action_words[1 - least]
        items.append(KnowledgeItem(situation, action, value_gap=1.0, support=n, examples=examples))
    return items


def reliability(policy: LLMPolicy, items: list[KnowledgeItem]) -> float:
    hits = [int(policy.scores(item.examples).argmax(1).eq(policy.action_words.index(item.action)).sum())
            for item in items]
    return sum(hits) / sum(len(item.examples) for item in items)


def checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> int:
    return sum(int((p != before[n]).sum()) for n, p in model.named_parameters())


# -- finding the subject ------------------------------------------------------------------------


def test_subject_position_is_last_token_of_multi_token_phrase(tiny):
    tok = tiny.tokenizer
    text = f"Cart at center. Situation: {LEFT}."
    ids, index = subject_position(tok, text, LEFT)
    assert ids == tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids[index]).strip() == "left" and tok.decode(ids[index + 1:]) == "."
    assert len(tok(LEFT, add_special_tokens=False).input_ids) > 1


def test_subject_position_takes_the_last_occurrence(tiny):
    tok = tiny.tokenizer
    text = f"Hint: if {LEFT}, push left. Observation: {LEFT}; go"
    _, index = subject_position(tok, text, LEFT)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][index][1] == text.rfind(LEFT) + len(LEFT)


def test_subject_position_inside_a_merged_token(tiny):
    # "leftover" ends mid-token for the subject "left": the covering token is the key position.
    text = "the pole is falling to the leftover"
    ids, index = subject_position(tiny.tokenizer, text, "falling to the left")
    start, end = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][index]
    assert start <= text.rfind("left") + 3 < end and index == len(ids) - 1


def test_subject_missing_is_a_usage_error(tiny):
    with pytest.raises(UsageError, match="does not occur"):
        subject_position(tiny.tokenizer, "Cart at center.", LEFT)


def test_item_whose_subject_is_not_in_its_prompts_is_refused_and_changes_nothing(tiny):
    lm = llama(tiny)
    policy, before = policy_for(lm), checksum(lm.model)
    item = KnowledgeItem("the cart is on fire", "left", 1.0, 1, examples=cartpole_texts()[LEFT][:2])
    with pytest.raises(UsageError, match="the cart is on fire"):
        WeightsInjector(**TINY).inject(policy, [item])
    assert checksum(lm.model) == before


# -- layers and layouts --------------------------------------------------------------------------


def test_resolve_layers_takes_indices_fractions_and_negative_indices():
    assert resolve_layers([0.0, 0.5, 0.9], 31, "memit") == [0, 15, 27]
    assert resolve_layers([-2, 3, 3], 30, "memit") == [3, 28]
    assert resolve_layers(None, 30, "rome") == [round(weights.DEFAULT_LAYERS["rome"][0] * 29)]
    assert resolve_layers(None, 2, "memit") == [0]
    with pytest.raises(UsageError, match="exactly one"):
        resolve_layers([1, 2], 30, "rome")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_layers([30], 30, "memit")
    with pytest.raises(UsageError, match="block after it"):  # nothing would carry the value to the answer
        resolve_layers([1.0], 30, "memit")


def test_layouts_are_detected(tiny):
    llama_layout = find_layout(llama(tiny).model)
    gpt2_layout = find_layout(gpt2(tiny).model)
    assert not llama_layout.transposed and gpt2_layout.transposed
    assert (llama_layout.hidden_size, llama_layout.key_size) == (64, 128)
    assert (gpt2_layout.hidden_size, gpt2_layout.key_size) == (64, 256)


def test_unsupported_architecture_is_a_usage_error(tiny):
    config = GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                           vocab_size=len(tiny.tokenizer))
    lm = LoadedModel(GPTNeoXForCausalLM(config).eval(), tiny.tokenizer, "neox", torch.device("cpu"), torch.float32)
    policy = policy_for(lm)
    with pytest.raises(UsageError, match="GPTNeoXForCausalLM"):
        WeightsInjector(**TINY).inject(policy, opposite_items(policy, [LEFT]))


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError):
        WeightsInjector(method="ft")
    with pytest.raises(UsageError):
        WeightsInjector(steps=0)
    with pytest.raises(UsageError):
        WeightsInjector(essence="no slot")


# -- edits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [llama, gpt2], ids=["llama", "gpt2"])
def test_rome_single_item_wins_and_undo_is_exact(tiny, make):
    lm = make(tiny)
    policy = policy_for(lm)
    items = opposite_items(policy, [LEFT])
    original = checksum(lm.model)
    snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    scores = policy.scores(items[0].examples)
    assert reliability(policy, items) <= 0.5

    edit = WeightsInjector(method="rome", **TINY).inject(policy, items)

    assert reliability(policy, items) == 1.0
    assert not torch.equal(policy.scores(items[0].examples), scores)  # the policy's own model changed
    assert edit.strategy == "weights" and edit.info["method"] == "rome" and edit.info["layers"] == [0]
    assert edit.params_touched == changed(lm.model, snapshot) > 0
    layout = find_layout(lm.model)
    assert edit.params_touched <= layout.hidden_size * layout.key_size
    (report,) = edit.info["items"]
    assert report["logp_after"] > report["logp_before"]
    edit.undo()
    assert checksum(lm.model) == original
    torch.testing.assert_close(policy.scores(items[0].examples), scores, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        edit.undo()


@pytest.mark.parametrize("make", [llama, gpt2], ids=["llama", "gpt2"])
def test_memit_batch_of_three_items_wins_and_undo_is_exact(tiny, make):
    lm = make(tiny)
    policy = policy_for(lm)
    items = opposite_items(policy, [LEFT, RIGHT, DRIFT_LEFT])
    original = checksum(lm.model)
    snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}

    edit = WeightsInjector(method="memit", **TINY).inject(policy, items)

    assert reliability(policy, items) == 1.0
    assert edit.params_touched == changed(lm.model, snapshot) > 0
    assert [r["situation"] for r in edit.info["items"]] == [LEFT, RIGHT, DRIFT_LEFT]
    assert edit.seconds >= edit.info["edit_seconds"] > 0
    edit.undo()
    assert checksum(lm.model) == original


def test_rome_items_apply_one_after_another_and_undo_restores_all(tiny):
    lm = llama(tiny)
    policy = policy_for(lm)
    items = opposite_items(policy, [LEFT, RIGHT])
    original = checksum(lm.model)
    edit = WeightsInjector(method="rome", **TINY).inject(policy, items)
    assert reliability(policy, items) == 1.0
    edit.undo()
    assert checksum(lm.model) == original


def test_failure_midway_restores_the_weights(tiny, monkeypatch):
    lm = llama(tiny)
    policy = policy_for(lm)
    original = checksum(lm.model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(WeightsInjector, "_after", boom)
    with pytest.raises(RuntimeError, match="boom"):
        WeightsInjector(method="memit", **TINY).inject(policy, opposite_items(policy, [LEFT, RIGHT]))
    assert checksum(lm.model) == original
    assert all(p.requires_grad for p in lm.model.parameters())


# -- statistics -------------------------------------------------------------------------------------


def test_statistics_are_cached_and_reused(tiny, stats_cache, monkeypatch):
    lm = llama(tiny)
    policy = policy_for(lm)
    items = opposite_items(policy, [LEFT])
    first = WeightsInjector(**TINY).inject(policy, items)
    assert first.info["stats_cached"] is False
    folder = stats_cache / "stats"
    files = sorted(p.name for p in folder.rglob("*.safetensors"))
    assert files == ["corpus.safetensors", "layer-000.safetensors"]
    first.undo()

    def no_sampling(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    sample = weights.sample_corpus
    monkeypatch.setattr(weights, "sample_corpus", no_sampling)
    second = WeightsInjector(**TINY).inject(policy, items)
    assert second.info["stats_cached"] is True and second.info["stats_dir"] == first.info["stats_dir"]
    second.undo()
    # Another model (other random weights) gets its own statistics.
    monkeypatch.setattr(weights, "sample_corpus", sample)
    other = policy_for(llama(tiny, seed=1))
    third = WeightsInjector(**TINY).inject(other, opposite_items(other, [LEFT]))
    assert third.info["stats_dir"] != first.info["stats_dir"] and not third.info["stats_cached"]


def test_second_moments_match_a_direct_computation(tiny):
    lm = llama(tiny)
    layout = find_layout(lm.model)
    corpus = [tiny.tokenizer(text, add_special_tokens=False).input_ids for text in ("The cat sat on the mat.", "Rain")]
    skip = [[1], []]
    moments, count = weights.second_moments(lm.model, layout, [0, 1], corpus, skip, tiny.tokenizer.pad_token_id)
    keys = {}
    hooks = [layout.projections[i].register_forward_pre_hook(lambda m, a, i=i: keys.setdefault(i, []).append(a[0][0]))
             for i in (0, 1)]
    with torch.no_grad():
        for seq in corpus:
            lm.model(input_ids=torch.tensor([seq]))
    for h in hooks:
        h.remove()
    for layer in (0, 1):
        k = torch.cat([keys[layer][0][[0] + list(range(2, len(corpus[0])))], keys[layer][1]])
        assert count == len(k)
        torch.testing.assert_close(moments[layer], (k.T @ k / len(k)).float(), rtol=1e-4, atol=1e-6)


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_memit_cartpole_items_are_reliable(real):
    card: Card
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, real)
    texts = cartpole_texts()
    items = [KnowledgeItem(LEFT, "left", 1.0, 20, examples=texts[LEFT][:20]),
             KnowledgeItem(RIGHT, "right", 1.0, 20, examples=texts[RIGHT][:20])]
    edit = WeightsInjector().inject(policy, items)
    try:
        assert reliability(policy, items) >= 0.95
    finally:
        edit.undo()
