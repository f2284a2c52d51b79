"""The weights strategy (ROME, MEMIT, AlphaEdit, FT-L) on tiny models of both layouts, plus a real-model check.

A random model hardly reads anything from a position's residual after the
first block, so no edit there can move its answer. The tiny models here are
first trained for a few seconds on a three-word task (the colour of a traffic
light -> stop / go / wait), with block 0's attention output zeroed and frozen:
the answer can then read the colour only from the subject's residual after
block 0, which is where the edit writes, as trained models read a subject's
middle-layer residual (ROME's causal traces). The hyper-parameters drop the
norm limits and the preservation weight tuned for the real model.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

import llmrl.inject.weights.forwards as forwards
import llmrl.inject.weights.injector as injector
import llmrl.inject.weights.statistics as statistics
from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.engine import Engine
from llmrl.errors import UsageError
from llmrl.inject.weights import WeightsInjector, find_layout, resolve_layers
from llmrl.inject.weights.prompts import make_prompt, subject_position
from llmrl.knowledge import KnowledgeItem
from llmrl.models import LoadedModel
from llmrl.policy import LLMPolicy
from llmrl.prompts import Prompt
from tests.helpers import start_texts

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTIONS = "You drive a car through a crossing."
WORDS = ["stop", "go", "wait"]
RED, GREEN, YELLOW = "the light is red", "the light is green", "the light is yellow"
TRAINED = {RED: "stop", GREEN: "go", YELLOW: "wait"}
CHANGED = {RED: "go", GREEN: "wait", YELLOW: "stop"}
#: Hyper-parameters for the tiny models: a small corpus, no norm limits, weak preservation.
TINY = dict(stats_tokens=256, clamp=10.0, weight_decay=0.0, mom2_weight_per_item=5.0, steps=20)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch, tiny):
    """Statistics go to a fresh cache per test (the tiny model's files are loaded before the switch)."""
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def signal_texts(situation: str, n: int = 8) -> list[str]:
    return [f"Crossing {d} m ahead at {5 * (d % 4) + 10} km/h. Situation: {situation}." for d in range(2, 2 + n)]


def signal_policy(lm: LoadedModel) -> LLMPolicy:
    return LLMPolicy(lm, Prompt(INSTRUCTIONS, list(WORDS)))


def new_model(tiny: LoadedModel, kind: str, seed: int = 0) -> LoadedModel:
    """A fresh random tiny Llama (the default's architecture) or GPT-2 with the tiny model's tokenizer."""
    torch.manual_seed(seed)
    if kind == "llama":
        model = AutoModelForCausalLM.from_config(tiny.model.config, dtype=torch.float32)
    else:
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tiny.tokenizer)))
    return LoadedModel(model.eval(), tiny.tokenizer, f"tiny-{kind}-{seed}", torch.device("cpu"), torch.float32)


def train(lm: LoadedModel, steps: int = 80) -> LoadedModel:
    """Teach :data:`TRAINED` with block 0's attention output zeroed (see the module docstring)."""
    model, tok = lm.model, lm.tokenizer
    blind = [p for n, p in model.named_parameters()
             if n.startswith(("model.layers.0.self_attn.o_proj", "transformer.h.0.attn.c_proj"))]
    with torch.no_grad():
        for p in blind:
            p.zero_()
    policy = signal_policy(lm)
    rows = [(tok(policy.decision_prompt(t), add_special_tokens=False).input_ids,
             tok(policy.answer_text(a), add_special_tokens=False).input_ids[0])
            for s, a in TRAINED.items() for t in signal_texts(s)]
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, (r, _) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    last = torch.tensor([len(r) - 1 for r, _ in rows])
    targets = torch.tensor([a for _, a in rows])
    params = [p for p in model.parameters() if all(p is not b for b in blind)]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[torch.arange(len(rows)), last])
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return lm


@pytest.fixture(scope="module")
def trained_models(tiny) -> dict[str, LoadedModel]:
    return {kind: train(new_model(tiny, kind)) for kind in ("llama", "gpt2")}


def trained_copy(trained_models: dict[str, LoadedModel], kind: str) -> LoadedModel:
    lm = trained_models[kind]
    return LoadedModel(copy.deepcopy(lm.model), lm.tokenizer, lm.name, lm.device, lm.dtype)


def signal_items(mapping: dict[str, str]) -> list[KnowledgeItem]:
    return [KnowledgeItem(s, a, value_gap=1.0, support=8, examples=signal_texts(s)) for s, a in mapping.items()]


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

LEFT = "the pole is falling to the left"


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
    assert tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][index][1] == \
        text.rfind(LEFT) + len(LEFT)


def test_subject_position_inside_a_merged_token(tiny):
    # The subject ends inside " leftover": the token covering its last character is the key position.
    text = "the pole is falling to the leftover"
    ids, index = subject_position(tiny.tokenizer, text, "falling to the left")
    start, end = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][index]
    assert start <= text.rfind("left") + 3 < end and index == len(ids) - 1


def test_subject_missing_is_a_usage_error(tiny):
    with pytest.raises(UsageError, match="does not occur"):
        subject_position(tiny.tokenizer, "Cart at center.", LEFT)


def test_item_whose_subject_is_not_in_its_prompts_is_refused_and_changes_nothing(trained_models):
    lm = trained_copy(trained_models, "llama")
    before = checksum(lm.model)
    item = KnowledgeItem("the light is blue", "go", 1.0, 1, examples=signal_texts(RED, 2))
    with pytest.raises(UsageError, match="the light is blue"):
        WeightsInjector(**TINY).inject(signal_policy(lm), [item])
    assert checksum(lm.model) == before


def test_item_with_an_unknown_action_or_no_examples_is_refused(trained_models):
    policy = signal_policy(trained_copy(trained_models, "llama"))
    with pytest.raises(UsageError, match="fly"):
        WeightsInjector(**TINY).inject(policy, [KnowledgeItem(RED, "fly", 1.0, 1, examples=signal_texts(RED, 2))])
    with pytest.raises(UsageError, match="no example"):
        WeightsInjector(**TINY).inject(policy, [KnowledgeItem(RED, "go", 1.0, 1)])


# -- layers and layouts --------------------------------------------------------------------------


def test_resolve_layers_takes_indices_fractions_and_negative_indices():
    assert resolve_layers([0.0, 0.5, 0.9], 31, "memit") == [0, 15, 27]
    assert resolve_layers([-2, 3, 3], 30, "memit") == [3, 28]
    assert resolve_layers(None, 30, "rome") == [12] and resolve_layers(None, 30, "memit") == [9, 10, 12, 13, 14]
    assert resolve_layers(None, 2, "memit") == [0]
    with pytest.raises(UsageError, match="exactly one"):
        resolve_layers([1, 2], 30, "rome")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_layers([30], 30, "memit")
    with pytest.raises(UsageError, match="block after it"):  # nothing would carry the value to the answer
        resolve_layers([1.0], 30, "memit")


def test_layouts_are_detected(tiny):
    llama_layout = find_layout(new_model(tiny, "llama").model)
    gpt2_layout = find_layout(new_model(tiny, "gpt2").model)
    assert not llama_layout.transposed and gpt2_layout.transposed
    assert (llama_layout.hidden_size, llama_layout.key_size) == (64, 128)
    assert (gpt2_layout.hidden_size, gpt2_layout.key_size) == (64, 256)


def test_unsupported_architecture_is_a_usage_error(tiny):
    config = GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                           vocab_size=len(tiny.tokenizer))
    lm = LoadedModel(GPTNeoXForCausalLM(config).eval(), tiny.tokenizer, "neox", torch.device("cpu"), torch.float32)
    with pytest.raises(UsageError, match="GPTNeoXForCausalLM"):
        WeightsInjector(**TINY).inject(signal_policy(lm), signal_items({RED: "go"}))


def test_bad_options_are_usage_errors():
    for options in ({"method": "ft"}, {"steps": 0}, {"essence": "no slot"}, {"clamp": 0.0}):
        with pytest.raises(UsageError):
            WeightsInjector(**options)


# -- edits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_rome_single_item_wins_and_undo_is_exact(trained_models, kind):
    lm = trained_copy(trained_models, kind)
    policy = signal_policy(lm)
    items = signal_items({RED: "go"})
    original = checksum(lm.model)
    snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    scores = policy.scores(items[0].examples)
    assert reliability(policy, signal_items({RED: "stop"})) == 1.0  # the trained answer, before

    edit = WeightsInjector(method="rome", **TINY).inject(policy, items)

    assert reliability(policy, items) == 1.0  # the policy's own model changed (its caches were dropped)
    assert edit.strategy == "weights" and edit.info["method"] == "rome" and edit.info["layers"] == [0]
    layout = find_layout(lm.model)
    assert 0 < edit.params_touched == changed(lm.model, snapshot) <= layout.hidden_size * layout.key_size
    (report,) = edit.info["items"]
    assert report["logp_after"] > report["logp_before"] + 1
    assert edit.seconds >= edit.info["edit_seconds"] > 0 and edit.info["stats_seconds"] > 0
    edit.undo()
    assert checksum(lm.model) == original
    torch.testing.assert_close(policy.scores(items[0].examples), scores, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        edit.undo()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_memit_batch_of_three_items_wins_and_undo_is_exact(trained_models, kind):
    lm = trained_copy(trained_models, kind)
    policy = signal_policy(lm)
    items = signal_items(CHANGED)
    original = checksum(lm.model)
    snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    assert reliability(policy, items) == 0.0

    edit = WeightsInjector(method="memit", **TINY).inject(policy, items)

    assert reliability(policy, items) == 1.0
    assert edit.params_touched == changed(lm.model, snapshot) > 0
    assert [r["situation"] for r in edit.info["items"]] == list(CHANGED)
    edit.undo()
    assert checksum(lm.model) == original


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_alphaedit_raises_the_items_and_undo_is_exact(trained_models, kind):
    lm = trained_copy(trained_models, kind)
    policy, items = signal_policy(lm), signal_items(CHANGED)
    original = checksum(lm.model)
    # a small ridge: the tiny models' keys are short, and at the default (10) the update barely moves them
    edit = WeightsInjector(method="memit", null_space=True, null_space_l2=0.1, **TINY).inject(policy, items)
    assert edit.params_touched > 0
    assert min(r["logp_after"] - r["logp_before"] for r in edit.info["items"]) > 1.0
    edit.undo()
    assert checksum(lm.model) == original


def test_memit_weighs_its_statistics_per_item_so_a_repeated_item_edits_alike(trained_models):
    """λ grows with the batch: the items' least squares sums over them, so with a fixed λ the same
    item would be written weakly alone and strongly in company (a real failure: 2-item edits of the
    default model did not land at MEMIT's λ = 15,000)."""
    updates = []
    for copies in (1, 3):
        lm = trained_copy(trained_models, "llama")
        snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        # λ large enough that the statistics hold the update back (a fixed λ differs by 3 % here)
        injector = WeightsInjector(method="memit", **{**TINY, "mom2_weight_per_item": 50000.0})
        injector.inject(signal_policy(lm), signal_items({RED: "go"}) * copies)
        updates.append(torch.cat([(p.detach() - snapshot[n]).flatten() for n, p in lm.model.named_parameters()]))
    assert updates[0].norm() > 0
    assert (updates[0] - updates[1]).norm() < 1e-4 * updates[0].norm()


def test_rome_items_apply_one_after_another_and_undo_restores_all(trained_models):
    """Each item wins right after its own rank-one edit; later edits of similar keys may overwrite
    earlier ones (ROME's known weakness in sequence, which MEMIT's joint solve avoids)."""
    lm = trained_copy(trained_models, "llama")
    policy = signal_policy(lm)
    items = signal_items(CHANGED)
    original = checksum(lm.model)
    edit = WeightsInjector(method="rome", **TINY).inject(policy, items)
    assert all(r["logp_after"] > math.log(0.5) for r in edit.info["items"])
    assert reliability(policy, items[-1:]) == 1.0
    edit.undo()
    assert checksum(lm.model) == original


def test_failure_midway_restores_the_weights(trained_models, monkeypatch):
    lm = trained_copy(trained_models, "llama")
    original = checksum(lm.model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(WeightsInjector, "_after", boom)
    with pytest.raises(RuntimeError, match="boom"):
        WeightsInjector(method="memit", **TINY).inject(signal_policy(lm), signal_items(CHANGED))
    assert checksum(lm.model) == original
    assert all(p.requires_grad for p in lm.model.parameters())


def test_split_prompts_and_replayed_blocks_score_like_the_policy(trained_models):
    """The cached-context, live-suffix forward (with the lower blocks replayed) gives the policy's own
    log-probabilities, here for a two-token answer."""
    lm = trained_copy(trained_models, "llama")
    card, texts = start_texts("MountainCar-v0", 3)
    policy = make_baseline("zero-shot", card, lm)
    assert isinstance(policy, LLMPolicy)
    situation = "the car is standing still"
    answer = policy.answer_text("push left")
    prompts = [make_prompt(lm.tokenizer, policy.decision_prompt(t), situation, answer) for t in texts]
    engine = Engine(lm.model, lm.tokenizer.pad_token_id)
    rows = forwards.cache_rows(engine, prompts, [0] * len(prompts))
    layout = find_layout(lm.model)
    with torch.no_grad():
        plain = forwards.answer_logp(engine, rows)
        with forwards.replay(layout.blocks[:1], forwards.block_output(engine, layout.blocks[0], rows)):
            replayed = forwards.answer_logp(engine, rows)
    assert len(prompts[0].answer) == 2
    expected = policy.scores(texts)[:, policy.action_words.index("push left")]
    torch.testing.assert_close(plain, expected, atol=1e-4, rtol=0)  # per token = per word here
    torch.testing.assert_close(replayed, plain, atol=1e-5, rtol=0)


# -- statistics -------------------------------------------------------------------------------------


def test_statistics_are_cached_and_reused(trained_models, tiny, stats_cache, monkeypatch):
    policy = signal_policy(trained_copy(trained_models, "llama"))
    items = signal_items({RED: "go"})
    first = WeightsInjector(**TINY).inject(policy, items)
    assert first.info["stats_cached"] is False
    assert sorted(p.name for p in (stats_cache / "stats").rglob("*.safetensors")) == \
        ["corpus.safetensors", "layer-000.safetensors"]
    first.undo()

    def no_sampling(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    sample = injector.sample_corpus
    monkeypatch.setattr(injector, "sample_corpus", no_sampling)
    second = WeightsInjector(**TINY).inject(policy, items)
    assert second.info["stats_cached"] is True and second.info["stats_dir"] == first.info["stats_dir"]
    second.undo()
    # Another model (other random weights) gets its own statistics.
    monkeypatch.setattr(injector, "sample_corpus", sample)
    other = WeightsInjector(**TINY).inject(signal_policy(new_model(tiny, "llama", seed=1)), items)
    assert other.info["stats_dir"] != first.info["stats_dir"] and other.info["stats_cached"] is False


def test_workers_starting_together_count_the_statistics_once(trained_models, monkeypatch):
    """Two processes that miss the cache at once: one samples and counts, the other waits and reads."""
    sampled, sample = [], injector.sample_corpus

    def slow_sample(*args, **kwargs):
        sampled.append(1)
        time.sleep(0.5)  # the other worker arrives while this one holds the build lock
        return sample(*args, **kwargs)

    monkeypatch.setattr(injector, "sample_corpus", slow_sample)
    items = signal_items({RED: "go"})
    results: dict[int, tuple] = {}

    def worker(n: int) -> None:
        policy = signal_policy(trained_copy(trained_models, "llama"))  # one copy each, the same weights
        layout = find_layout(policy.lm.model)
        results[n] = WeightsInjector(**TINY).statistics(policy, layout, [0], items)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sampled) == 1 and sorted(info["stats_cached"] for _, info in results.values()) == [False, True]
    torch.testing.assert_close(results[0][0][0], results[1][0][0], atol=0, rtol=0)


def test_second_moments_match_a_direct_computation(tiny):
    model = new_model(tiny, "llama").model
    layout = find_layout(model)
    corpus = [tiny.tokenizer(text, add_special_tokens=False).input_ids for text in ("The cat sat on the mat.", "Rain")]
    moments, count = statistics.second_moments(Engine(model, tiny.tokenizer.pad_token_id), layout, [0, 1],
                                               statistics.Corpus(corpus, [[1], []]))
    keys: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    hooks = [layout.projections[i].register_forward_pre_hook(lambda m, a, i=i: keys[i].append(a[0][0]))
             for i in (0, 1)]
    with torch.no_grad():
        for seq in corpus:
            model(input_ids=torch.tensor([seq]))
    for hook in hooks:
        hook.remove()
    for layer in (0, 1):
        first = keys[layer][0]
        k = torch.cat([first[[0] + list(range(2, len(first)))], keys[layer][1]])
        assert count == len(k)
        torch.testing.assert_close(moments[layer], (k.T @ k / len(k)).float(), rtol=1e-4, atol=1e-6)


# -- the real model ---------------------------------------------------------------------------------


def cartpole_texts(situation: str, n: int) -> list[str]:
    """Distinct real CartPole observation texts of one situation, from seeded random episodes."""
    card, _ = get_card("CartPole-v1")
    env = card.make_env()
    gen = torch.Generator().manual_seed(0)
    found: list[str] = []
    for episode in range(200):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done and len(found) < n:
            text, seen = card.text(obs, env)
            if seen == situation and text not in found:
                found.append(text)
            obs, _, terminated, truncated, _ = env.step(int(torch.randint(2, (1,), generator=gen)))
            done = terminated or truncated
    return found


@pytest.mark.slow
def test_real_memit_cartpole_items_are_reliable(real):
    """The default model and settings (the statistics pass takes minutes the first time)."""
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, real)
    assert isinstance(policy, LLMPolicy)
    right = "the pole is falling to the right"
    items = [KnowledgeItem(LEFT, "left", 1.0, 30, examples=cartpole_texts(LEFT, 30)),
             KnowledgeItem(right, "right", 1.0, 30, examples=cartpole_texts(right, 30))]
    edit = WeightsInjector().inject(policy, items)
    try:
        assert reliability(policy, items) >= 0.95
        assert 0.99 * 5 * 576 * 1536 < edit.params_touched <= 5 * 576 * 1536  # float32 may absorb tiny changes
    finally:
        edit.undo()


# -- FT-L: one projection fine-tuned within an L-infinity bound --------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_ft_l_moves_one_projection_within_its_bound_and_undo_is_exact(trained_models, kind):
    lm = trained_copy(trained_models, kind)
    policy = signal_policy(lm)
    items = signal_items(CHANGED)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    digest = checksum(lm.model)
    assert reliability(policy, items) == 0.0  # the model was trained on other answers
    bound = 0.05
    edit = WeightsInjector(method="ft-l", ft_bound=bound, ft_lr=0.01, ft_passes=40).inject(policy, items)
    assert reliability(policy, items) == 1.0
    layout = find_layout(lm.model)
    layer = edit.info["items"]["layer"]
    moved = {n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])}
    (name,) = moved
    assert lm.model.get_parameter(name) is layout.projections[layer].weight
    assert float((layout.projections[layer].weight.detach() - before[name]).abs().max()) <= bound + 1e-6  # float32 rounding
    assert edit.params_touched == int((layout.projections[layer].weight != before[name]).sum()) > 0
    edit.undo()
    assert checksum(lm.model) == digest


def test_ft_l_bound_holds_where_the_items_need_more(trained_models):
    lm = trained_copy(trained_models, "llama")
    policy = signal_policy(lm)
    items = signal_items({RED: "go"})
    weight = find_layout(lm.model).projections[0].weight
    original = weight.detach().clone()
    edit = WeightsInjector(method="ft-l", ft_bound=1e-4, ft_lr=0.01, ft_passes=10).inject(policy, items)
    assert float((weight - original).abs().max()) <= 1e-4 + 1e-6
    assert edit.info["items"]["max_nll"] > 0.05 and edit.info["items"]["steps"] == 10
    assert reliability(policy, items) == 0.0  # too small a change to move the answer
    edit.undo()
    edit = WeightsInjector(method="ft-l", ft_bound=1e-4, ft_lr=0.01, ft_passes=10, ft_max_steps=3).inject(
        policy, items)
    assert edit.info["items"]["steps"] == 3  # the cap ends the passes


def test_ft_l_errors(trained_models):
    with pytest.raises(UsageError, match="ft-l edits exactly one layer"):
        WeightsInjector(method="ft-l", layers=[0, 1]).inject(signal_policy(trained_copy(trained_models, "llama")),
                                                             signal_items({RED: "go"}))
    with pytest.raises(UsageError, match="ft_passes, ft_batch and ft_max_steps must be >= 1"):
        WeightsInjector(method="ft-l", ft_bound=0)
    with pytest.raises(UsageError, match="ft_max_steps must be >= 1"):
        WeightsInjector(method="ft-l", ft_max_steps=0)
