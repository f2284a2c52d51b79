"""The adapter strategy: LoRA edits that land in the policy's model, switch, merge, save and undo exactly.

Mutating tests build a fresh tiny model each; one slow test measures the edit
on the real default model (CartPole, zero-shot policy) and prints the figures.
"""

from __future__ import annotations

import hashlib
import time
import warnings

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.engine import Engine
from llmrl.evaluate import evaluate
from llmrl.inject.adapter import (
    AdapterInjector,
    action_logprobs,
    balanced_batches,
    default_target_modules,
    encode,
    lump_actions,
)
from llmrl.knowledge import KnowledgeItem, spread, texts_by_situation
from llmrl.metrics import LocalityProbe, environment_prompts, locality_prompts
from llmrl.models import LoadedModel, default_model_dir, fetch_default, tiny_model
from llmrl.policy import LLMPolicy, RandomPolicy
from llmrl.prompts import Prompt
from llmrl.rollout import rollout

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["push left", "no push", "push right"]
#: Enough training for the random tiny model to learn the items: it needs its attention adapted to
#: tell the situations apart, and its output layer gives logits too flat to lift one action while
#: keeping the action words' total probability, so that term is off.
#: Every example is trained on (no holdout): these tests check that the items' own examples are learned.
LEARN = dict(steps=100, lr=1e-2, answer_weight=0.0, locality_weight=0.0, holdout=0,
             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
#: A few steps with every loss term: enough to change the scores, for the tests of the mechanics.
QUICK = dict(steps=4, lr=1e-2)


def _texts(template: str, situation: str, n: int) -> list[str]:
    """Observation texts of one situation; distinct wording per situation keeps the random tiny model learnable."""
    return [template.format(x=0.3 * i) + f" Situation: {situation}." for i in range(n)]


ITEMS = [
    KnowledgeItem("the car is rolling left", "push left", 1.0, 20, examples=_texts(
        "Car {x:.1f} m west, drifting west towards the western hill.", "the car is rolling left", 5)),
    KnowledgeItem("the car is rolling right", "push right", 1.0, 20, examples=_texts(
        "Wheels spinning eastward, climbing the eastern slope at {x:.1f}.", "the car is rolling right", 3)),
    KnowledgeItem("the car is standing still", "no push", 1.0, 20, examples=_texts(
        "Motionless vehicle resting quietly at the bottom ({x:.1f}).", "the car is standing still", 4)),
]
ALL_TEXTS = [t for i in ITEMS for t in i.examples]


@pytest.fixture(scope="module")
def tokenizer():
    fetch_default()
    return AutoTokenizer.from_pretrained(default_model_dir())


def make_policy(tokenizer, seed: int = 0) -> LLMPolicy:
    """A policy on a fresh tiny model, so that mutating tests cannot leak into each other."""
    lm = LoadedModel(tiny_model(seed).eval(), tokenizer, "tiny", torch.device("cpu"), torch.float32)
    return LLMPolicy(lm, Prompt("You drive a car out of a valley.", WORDS))


def digest(model: torch.nn.Module) -> str:
    """Hash of every parameter's name and raw bytes."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def structure(model: torch.nn.Module) -> tuple:
    """Module names and types, parameter names with their grad flags, and the train/eval mode."""
    return ([(n, type(m).__name__) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()], model.training, sorted(vars(model)))


def chosen(policy: LLMPolicy, texts: list[str]) -> list[str]:
    return [policy.action_words[int(i)] for i in policy.scores(texts).argmax(-1)]


def test_training_scores_are_the_policys_scores(tokenizer):
    """The differentiable scorer computes what the policy decides on, multi-token actions included."""
    policy = make_policy(tokenizer)
    enc = encode(policy, ITEMS)
    assert len(enc.prefix) > 10 and enc.targets == [0, 2, 1]
    assert [len(a) for a in enc.actions] == [2, 2, 2]
    suffixes = [s for rows in enc.suffixes for s in rows]
    assert all(tokenizer(policy.decision_prompt(t), add_special_tokens=False).input_ids == enc.prefix + s
               for t, s in zip(ALL_TEXTS, suffixes))
    with torch.no_grad():
        scores, first = action_logprobs(Engine(policy.lm.model, tokenizer.pad_token_id), enc, suffixes)
    torch.testing.assert_close(scores / enc.norms, policy.scores(ALL_TEXTS), atol=1e-4, rtol=0)
    lumped = lump_actions(first, enc.actions)  # "push" (shared by two actions) and "no" become one outcome
    assert lumped.shape[1] == first.shape[1] - 1
    torch.testing.assert_close(lumped.logsumexp(-1), torch.zeros(len(suffixes)), atol=1e-5, rtol=0)


def test_batches_weight_items_equally():
    batches = balanced_batches([1, 7], 4, torch.Generator().manual_seed(0))
    drawn = [pair for _ in range(7) for pair in next(batches)]
    assert sum(item == 0 for item, _ in drawn) == sum(item == 1 for item, _ in drawn) == 14
    assert sorted(e for item, e in drawn if item == 1) == sorted(list(range(7)) * 2)


@pytest.mark.parametrize("objective", ["choice", "lm"])
def test_edit_lands_in_the_policys_model_and_undo_is_bit_exact(tokenizer, objective):
    policy = make_policy(tokenizer)
    model = policy.lm.model
    before, shape, scores0 = digest(model), structure(model), policy.scores(ALL_TEXTS)
    edit = AdapterInjector(**LEARN, objective=objective).inject(policy, ITEMS)
    assert policy.lm.model is model
    assert edit.strategy == "adapter" and edit.seconds > 0 and edit.info["steps"] <= LEARN["steps"]
    assert not torch.allclose(policy.scores(ALL_TEXTS), scores0)
    assert chosen(policy, ALL_TEXTS) == [i.action for i in ITEMS for _ in i.examples]
    handle = edit.info["adapter"]
    assert edit.params_touched == handle.peft_model.get_nb_trainable_parameters()[0] > 0
    assert edit.params_touched == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    edit.undo()
    assert digest(model) == before and structure(model) == shape
    torch.testing.assert_close(policy.scores(ALL_TEXTS), scores0, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="already undone"):
        edit.undo()


def test_switch_off_and_on(tokenizer):
    policy = make_policy(tokenizer)
    before, scores0 = digest(policy.lm.model), policy.scores(ALL_TEXTS)
    edit = AdapterInjector(**QUICK).inject(policy, ITEMS)
    edited, handle = policy.scores(ALL_TEXTS), edit.info["adapter"]
    handle.set_enabled(False)
    torch.testing.assert_close(policy.scores(ALL_TEXTS), scores0, atol=1e-6, rtol=0)
    handle.set_enabled(True)
    torch.testing.assert_close(policy.scores(ALL_TEXTS), edited, atol=1e-6, rtol=0)
    handle.set_enabled(False)
    edit.undo()  # from the switched-off state
    assert digest(policy.lm.model) == before


@pytest.mark.parametrize("after_merge", ["undo", "switch off, undo"])
def test_merge_keeps_the_effect_and_undo_is_still_bit_exact(tokenizer, after_merge):
    policy = make_policy(tokenizer)
    model = policy.lm.model
    before, shape, scores0 = digest(model), structure(model), policy.scores(ALL_TEXTS)
    edit = AdapterInjector(**QUICK).inject(policy, ITEMS)
    edited, handle = policy.scores(ALL_TEXTS), edit.info["adapter"]
    handle.merge()
    assert handle.merged and digest(model) != before
    torch.testing.assert_close(policy.scores(ALL_TEXTS), edited, atol=1e-4, rtol=0)
    if after_merge.startswith("switch off"):
        handle.set_enabled(False)
        assert not handle.merged
        torch.testing.assert_close(policy.scores(ALL_TEXTS), scores0, atol=1e-6, rtol=0)
    edit.undo()
    assert digest(model) == before and structure(model) == shape


def test_adapter_is_saved_as_safetensors_and_reloads(tokenizer, tmp_path):
    policy = make_policy(tokenizer, seed=3)
    edit = AdapterInjector(**QUICK, save_dir=tmp_path / "adapter").inject(policy, ITEMS)
    edited = policy.scores(ALL_TEXTS)
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    assert edit.info["path"] == str(path) and path.is_file()
    assert not list((tmp_path / "adapter").glob("*.bin")) and not list((tmp_path / "adapter").glob("*.pt"))
    assert sum(t.numel() for t in load_file(path).values()) == edit.params_touched
    fresh = make_policy(tokenizer, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation inside peft
        PeftModel.from_pretrained(fresh.lm.model, tmp_path / "adapter")
    torch.testing.assert_close(fresh.scores(ALL_TEXTS), edited, atol=1e-5, rtol=0)
    edit.undo()


def test_a_second_inject_trains_the_same_adapter_further_another_injector_is_refused(tokenizer):
    """Sequential editing: the injector's own live adapter is trained further, and that edit's undo puts its
    weights back; an adapter another injector made must be undone first."""
    policy = make_policy(tokenizer)
    injector = AdapterInjector(**QUICK)
    edit = injector.inject(policy, ITEMS)
    state = digest(policy.lm.model)
    with pytest.raises(RuntimeError, match="undo the previous edit"):
        AdapterInjector(**QUICK).inject(policy, ITEMS)
    assert digest(policy.lm.model) == state
    more = injector.inject(policy, ITEMS[:1])
    assert more.info["continued"] and digest(policy.lm.model) != state
    more.undo()
    assert digest(policy.lm.model) == state
    edit.undo()
    injector.inject(policy, ITEMS[:1]).undo()


def test_one_adapter_learns_two_policies_items_at_once(tokenizer):
    """A joint edit (a stream's rebuild across cards): one adapter trained on two policies' items, their
    batches in turn. Each policy chooses its own items' actions, undo is bit-exact, and further training
    holds both policies' items; policies on two models are refused."""
    policy = make_policy(tokenizer)
    other = LLMPolicy(policy.lm, Prompt("You steer a boat across a lake.", WORDS))
    before, shape = digest(policy.lm.model), structure(policy.lm.model)
    injector = AdapterInjector(**LEARN)
    edit = injector.inject_jointly([(policy, ITEMS[:2]), (other, ITEMS[2:])])
    assert edit.items == ITEMS and edit.info["adapter"].policies == [policy, other]
    assert chosen(policy, ITEMS[0].examples + ITEMS[1].examples) == [i.action for i in ITEMS[:2] for _ in i.examples]
    assert chosen(other, ITEMS[2].examples) == [ITEMS[2].action] * len(ITEMS[2].examples)
    assert [(p is policy, i) for p, i in injector._live[None].trained] == [(True, ITEMS[0]), (True, ITEMS[1]),
                                                                     (False, ITEMS[2])]
    more = injector.inject(policy, ITEMS[:1])  # sequential on top: the other policy's item is among those held
    assert more.info["kept_items"] == 2
    more.undo()
    edit.undo()
    assert digest(policy.lm.model) == before and structure(policy.lm.model) == shape
    with pytest.raises(ValueError, match="same model"):
        injector.inject_jointly([(policy, ITEMS[:1]), (make_policy(tokenizer, 1), ITEMS[1:2])])


def test_training_further_holds_the_earlier_items_choices(tokenizer):
    """Sequential editing: with ``keep_weight`` the earlier item's choice moves far less than without it
    (Learning without Forgetting), and undoing the further training forgets what it was trained on."""
    def drift(keep_weight: float) -> tuple[float, AdapterInjector]:
        policy = make_policy(tokenizer)
        injector = AdapterInjector(**{**LEARN, "steps": 30, "keep_weight": keep_weight})
        injector.inject(policy, ITEMS[:1])
        was = torch.log_softmax(policy.scores(ITEMS[0].examples), -1)
        more = injector.inject(policy, ITEMS[1:2])
        now = torch.log_softmax(policy.scores(ITEMS[0].examples), -1)
        assert more.info["kept_items"] == (1 if keep_weight else 0)
        assert [i.situation for _, i in injector._live[None].trained] == [ITEMS[0].situation, ITEMS[1].situation]
        more.undo()
        assert [i for _, i in injector._live[None].trained] == ITEMS[:1]
        return float((was.exp() * (was - now)).sum(-1).mean()), injector

    naive, _ = drift(0.0)
    held, injector = drift(10.0)
    assert naive > 0.05, naive  # training on the new item alone moves the earlier one
    assert held < naive / 3, (held, naive)


def test_held_out_examples_are_not_trained_on_and_decide_when_to_stop(tokenizer, monkeypatch):
    """Every ``holdout``-th example of an item that has that many is kept out of the training batches;
    training stops early only when the held-out examples' loss, too, is below ``stop_loss``."""
    policy = make_policy(tokenizer)
    enc = encode(policy, ITEMS)  # 5, 3 and 4 examples
    train, held = AdapterInjector(holdout=2)._split(enc)
    assert held == [(0, 1), (0, 3), (1, 1), (2, 1), (2, 3)]
    assert train == [[0, 2, 4], [0, 2], [0, 2]]
    assert AdapterInjector(holdout=0)._split(enc) == ([[0, 1, 2, 3, 4], [0, 1, 2], [0, 1, 2, 3]], [])
    seen: list[tuple[int, int]] = []
    real = balanced_batches

    def spy(counts, size, gen):
        for batch in real(counts, size, gen):
            seen.extend(batch)
            yield batch

    monkeypatch.setattr("llmrl.inject.adapter.injector.balanced_batches", spy)
    # a stop_loss every batch meets: only the held-out examples can keep training going
    monkeypatch.setattr(AdapterInjector, "_held_loss", lambda *a: float("inf"))
    edit = AdapterInjector(**{**QUICK, "stop_loss": 1e9, "holdout": 2}).inject(policy, ITEMS)
    assert edit.info["steps"] == QUICK["steps"]
    assert {(i, train[i][k]) for i, k in seen}.isdisjoint(held)
    edit.undo()
    monkeypatch.setattr(AdapterInjector, "_held_loss", lambda *a: 0.0)
    edit = AdapterInjector(**{**QUICK, "stop_loss": 1e9, "holdout": 2}).inject(policy, ITEMS)
    assert edit.info["steps"] == 1
    edit.undo()
    with pytest.raises(ValueError, match="holdout"):
        AdapterInjector(holdout=1)


def test_failed_training_leaves_the_model_as_it_was(tokenizer, monkeypatch):
    policy = make_policy(tokenizer)
    before, shape = digest(policy.lm.model), structure(policy.lm.model)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(AdapterInjector, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AdapterInjector().inject(policy, ITEMS)
    assert digest(policy.lm.model) == before and structure(policy.lm.model) == shape


def test_locality_term_reduces_kl_on_locality_prompts(tokenizer):
    def kl_after(weight: float) -> float:
        policy = make_policy(tokenizer)
        tok, model = policy.lm.tokenizer, policy.lm.model
        batch = tok(locality_prompts("train"), add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            ref = torch.log_softmax(model(**batch).logits, -1)
        injector = AdapterInjector(**{**LEARN, "steps": 20, "stop_loss": 0.0, "locality_weight": weight})
        edit = injector.inject(policy, ITEMS)
        with torch.no_grad():
            cur = torch.log_softmax(model(**batch).logits, -1)
        edit.undo()
        kl = (ref.exp() * (ref - cur)).sum(-1)
        return float((kl * batch.attention_mask).sum() / batch.attention_mask.sum())

    free, anchored = kl_after(0.0), kl_after(100.0)
    print(f"locality KL without the term {free:.4f}, with it {anchored:.4f}")
    assert anchored < 0.5 * free


def test_gpt2_layout(tokenizer):
    """GPT-2 keeps its projections in Conv1D layers under other names; the default targets find them."""
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    assert default_target_modules(model) == ["c_fc", "mlp.c_proj"]
    policy = LLMPolicy(LoadedModel(model, tokenizer, "gpt2-tiny", torch.device("cpu"), torch.float32),
                       Prompt("You drive a car out of a valley.", WORDS))
    before, scores0 = digest(model), policy.scores(ALL_TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft's fan_in_fan_out warning for Conv1D
        edit = AdapterInjector(**QUICK).inject(policy, ITEMS)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == 4 and all(".mlp." in n for n in wrapped)  # not the attention's c_proj
    assert not torch.allclose(policy.scores(ALL_TEXTS), scores0)
    edit.undo()
    assert digest(model) == before


def test_bad_input_is_refused(tokenizer):
    policy = make_policy(tokenizer)
    with pytest.raises(ValueError, match="not among the policy's action words"):
        AdapterInjector().inject(policy, [KnowledgeItem("s", "jump", 1.0, 5, examples=["x"])])
    with pytest.raises(ValueError, match="no knowledge item"):
        AdapterInjector().inject(policy, [KnowledgeItem("s", "no push", 1.0, 5)])
    with pytest.raises(ValueError, match="objective"):
        AdapterInjector(objective="rl")
    thinking = LLMPolicy(policy.lm, Prompt("You drive a car out of a valley.", WORDS, reasoning=True))
    with pytest.raises(ValueError, match="chain-of-thought"):
        AdapterInjector().inject(thinking, ITEMS)
    assert not any("lora" in n for n, _ in policy.lm.model.named_parameters())


#: Unrelated sentences for measuring locality, none of them among the injector's own locality prompts.
HELD_OUT = """The history of the Roman Empire spans
My grandmother always told me that
The best way to learn a new language is
In the middle of the night, the dog started
Quantum mechanics describes the behaviour of
The company announced its quarterly earnings, which
A good cup of coffee needs freshly ground beans and
The hikers reached the summit just before
Paris is known for the Eiffel Tower and
The novel tells the story of a young woman who
Computers store information as sequences of
The football match ended in a draw after
To make a paper airplane, first fold the
Volcanoes erupt when pressure builds up
The museum's new exhibition features paintings by
Bees collect nectar from flowers to make
The teacher asked the students to write an essay about
In mathematics, a prime number is
The ship sailed across the Atlantic in
Vitamin C can be found in oranges, lemons and
The concert was cancelled because of
Mount Everest is the highest mountain in
The detective examined the room and noticed
Most birds build their nests in
The invention of the printing press changed
It was a cold winter morning when
Solar panels convert sunlight into
The city council voted to build a new
A balanced diet includes fruits, vegetables and
The astronaut looked out of the window and saw
Chess is a game played by two players on
The river flows through the valley towards
Tea was first grown in
The orchestra began to play the opening notes of
Our hotel room had a beautiful view of
The farmer planted wheat in the spring and
Dinosaurs lived millions of years ago, until
The programmer fixed the bug by changing
Honey never spoils because
The bakery on the corner sells fresh bread every
Light travels faster than sound, which is why
The students went on a field trip to
Whales communicate with each other using
The old castle on the hill was built in
The moon orbits the Earth about once every
Swimming is a great exercise because it
The President gave a speech about
Penguins live mostly in the Southern Hemisphere, where
The smell of fresh rain is called
The first computer programmer is often said to be""".splitlines()


@pytest.mark.slow
def test_real_cartpole_edit(real):
    """The figures of the adapter strategy on the default model; run with -s to see them.

    Items: the two "falling" situations of CartPole, 20 example texts each from
    random play, which the zero-shot policy answers the same way.
    """
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, real)
    seen = texts_by_situation(rollout(RandomPolicy(card.action_words, seed=0), card, 60, seed=0, n_envs=8))
    new = texts_by_situation(rollout(RandomPolicy(card.action_words, seed=1), card, 60, seed=5000, n_envs=8))
    situations = {side: f"the pole is falling to the {side}" for side in ("left", "right")}
    items = [KnowledgeItem(s, side, 1.0, 50, examples=spread(seen[s], 20)) for side, s in situations.items()]
    fresh = [(t, i.action) for i in items for t in [t for t in new[i.situation] if t not in i.examples][:40]]
    given = [(t, i.action) for i in items for t in i.examples]

    def agreement(pairs: list[tuple[str, str]]) -> float:
        return sum(a == w for a, (_, w) in zip(chosen(policy, [t for t, _ in pairs]), pairs)) / len(pairs)

    general = LocalityProbe(real, HELD_OUT)
    others = LocalityProbe(real, environment_prompts(real.tokenizer, "CartPole-v1"))
    before = digest(real.model)
    zero_shot = agreement(given)
    cpu = time.process_time()
    edit = AdapterInjector().inject(policy, items)
    cpu = time.process_time() - cpu
    try:
        figures = {"reliability_before": zero_shot, "reliability": agreement(given), "generalization": agreement(fresh),
                   "fresh_texts": len(fresh), "edit_seconds": round(edit.seconds, 1), "edit_cpu_seconds": round(cpu, 1),
                   "steps": edit.info["steps"],
                   "params_touched": edit.params_touched,
                   **{f"general_{k}": v for k, v in general.measure().items()},
                   **{f"other_envs_{k}": v for k, v in others.measure().items()}}
        result, _ = evaluate(policy, card, "adapter", real.name, episodes=10, seed=100, n_envs=8, progress=False)
        figures["mean_return"] = result.mean_return
        print(figures)
    finally:
        edit.undo()
    assert digest(real.model) == before
    assert figures["reliability"] >= 0.95 and figures["generalization"] >= 0.9
    assert figures["general_locality_kl"] < 0.01 and figures["other_envs_locality_kl"] < 0.2
    assert figures["mean_return"] >= 400
