"""The policy's scores, caches, sampling and answer parsing, on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from llmrl.errors import UsageError
from llmrl.policy import LLMPolicy, RandomPolicy
from llmrl.prompts import Prompt, render
from tests.helpers import reference_scores

TEXTS = [
    "Cart 0.1 m left of center, moving 0.4 m/s right. Situation: the pole is falling to the right.",
    "Cart at center. Situation: the pole is falling to the left.",
    "Pole upright. Situation: the pole is balanced and the cart drifts left.",
]
WORDS = ["turn left", "turn right", "go forward", "wait"]


@pytest.mark.parametrize("normalization", ["word", "token", "sum"])
def test_cached_batched_scores_equal_plain_forward(tiny, normalization):
    prompt = Prompt("You are in a maze.", WORDS, context="Rule: go forward when the ball is ahead.")
    policy = LLMPolicy(tiny, prompt, normalization=normalization, max_batch=2)  # chunks: 2 + 1 rows
    got = policy.scores(TEXTS)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, reference_scores(tiny, prompt, TEXTS, normalization), atol=1e-4, rtol=0)
    # a second call comes from the decision cache and is identical
    torch.testing.assert_close(policy.scores(TEXTS[::-1]), got.flip(0), atol=0, rtol=0)
    assert policy.stats.cache_hits == 3


def test_uncached_scores_use_exactly_the_batch_given_and_leave_the_cache_alone(tiny):
    prompt = Prompt("You are in a maze.", WORDS)
    policy = LLMPolicy(tiny, prompt, max_batch=2)
    got = policy.scores(TEXTS, cached=False)
    assert not policy._decisions and policy.stats.cache_hits == 0
    torch.testing.assert_close(got, reference_scores(tiny, prompt, TEXTS, "word"), atol=1e-4, rtol=0)
    policy.scores(TEXTS[:1])  # cached now; an uncached call still scores afresh
    torch.testing.assert_close(policy.scores(TEXTS, cached=False), got, atol=0, rtol=0)
    assert policy.stats.cache_hits == 0


def test_plain_layout_without_chat_template(tiny):
    lm = copy.copy(tiny)
    lm.tokenizer = copy.deepcopy(tiny.tokenizer)
    lm.tokenizer.chat_template = None
    prompt = Prompt("Balance the pole.", ["left", "right"], shots=[("Pole upright.", "left")])
    rendered = render(prompt, lm.tokenizer)
    assert rendered.suffix == "\nAction:" and rendered.lead == " " and "Action: left" in rendered.prefix
    torch.testing.assert_close(LLMPolicy(lm, prompt).scores(TEXTS), reference_scores(lm, prompt, TEXTS, "word"),
                               atol=1e-4, rtol=0)


def test_decision_cache_is_bounded_lru_and_cleared_by_new_prompt(tiny):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "right"]), decision_cache_size=2)
    policy.scores(TEXTS)
    assert list(policy._decisions) == TEXTS[1:]
    policy.scores([TEXTS[1]])  # refresh: TEXTS[1] becomes most recent
    policy.scores([TEXTS[0]])  # evicts TEXTS[2]
    assert list(policy._decisions) == [TEXTS[1], TEXTS[0]]
    policy.set_prompt(Prompt("Another task.", ["left", "right"]))
    assert not policy._decisions


def test_a_prompt_detour_leaves_the_prompt_and_its_caches_as_they_were(tiny):
    prompt = Prompt("Task.", WORDS)
    policy = LLMPolicy(tiny, prompt)
    first = policy.scores(TEXTS)
    prefix = policy._prefix()
    with policy.using_prompt(Prompt("Reworded task.", WORDS)) as detour:
        other = detour.scores(TEXTS)
        assert policy.prompt.instructions == "Reworded task." and policy.stats.cache_hits == 0
    assert not torch.equal(other, first)  # the detour scored under its own prompt
    assert policy.prompt == prompt and policy._prefix() is prefix
    torch.testing.assert_close(policy.scores(TEXTS), first, atol=0, rtol=0)
    assert policy.stats.cache_hits == 3  # the cache came back with the prompt


def test_act_counts_hits_and_duplicates_in_one_batch(tiny):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "right"]))
    actions = policy.act([TEXTS[0], TEXTS[0], TEXTS[1]])
    assert len(actions) == 3 and actions[0] == actions[1]
    assert policy.stats.decisions == 3 and policy.stats.tokens > 0
    policy.act([TEXTS[0]])
    assert policy.stats.cache_hits == 1 and policy.stats.cache_hit_rate == pytest.approx(0.25)


def test_greedy_is_argmax_and_sampling_follows_softmax(tiny):
    prompt = Prompt("Task.", ["left", "right", "up"])
    greedy = LLMPolicy(tiny, prompt)
    scores = greedy.scores([TEXTS[0]])[0]
    assert greedy.act([TEXTS[0]]) == [int(scores.argmax())]
    hot = LLMPolicy(tiny, prompt, temperature=2.0, seed=3)
    draws = torch.tensor(hot.act([TEXTS[0]] * 4000))
    freq = torch.bincount(draws, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(scores / 2.0, -1), atol=0.03, rtol=0)
    assert LLMPolicy(tiny, prompt, temperature=2.0, seed=3).act([TEXTS[0]] * 4000) == draws.tolist()


def test_parse_answers(tiny):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "turn left", "go forward"]))
    assert policy.parse("Action: turn left") == 1
    assert policy.parse("I would go forward, not left. Action: left") == 0
    assert policy.parse("Maybe GO FORWARD now") == 2
    assert policy.parse("leftover") is None
    assert policy.parse("") is None


def test_generate_mode_falls_back_and_says_so(tiny):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "right"]), mode="generate", default_action=1, max_new_tokens=4)
    # the random tiny model answers gibberish: every decision must fall back, none crash
    actions = policy.act(TEXTS, slots=[0, 1, 2])
    assert actions == [1, 1, 1]
    assert policy.stats.fallbacks == 3 and policy.stats.fallback_rate == 1.0
    assert policy._invalid == {0, 1, 2}


def test_generate_mode_parses_a_valid_answer(tiny, monkeypatch):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "right"]), mode="generate")
    monkeypatch.setattr(policy, "_decode", lambda batch, last, stop: (["Action: right"] * last.shape[0], batch))
    policy._invalid.add(0)
    assert policy.act([TEXTS[0]], slots=[0]) == [1]
    assert policy.stats.fallbacks == 0 and not policy._invalid


def test_chain_of_thought_scores_after_a_rationale(tiny):
    policy = LLMPolicy(tiny, Prompt("Task.", ["left", "right"], reasoning=True), max_new_tokens=3)
    scores = policy.scores(TEXTS[:2])
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()
    # rationale tokens were decoded on top of the suffix before scoring
    assert policy.stats.tokens > sum(len(policy.suffix_ids(t)) for t in TEXTS[:2])


def test_random_policy_is_seeded():
    a = RandomPolicy(["a", "b", "c"], seed=1).act(["x"] * 50)
    assert a == RandomPolicy(["a", "b", "c"], seed=1).act(["x"] * 50)
    assert set(a) == {0, 1, 2}


@pytest.mark.parametrize("kwargs", [dict(mode="dream"), dict(normalization="max"), dict(temperature=-1.0),
                                    dict(max_batch=0)])
def test_bad_policy_options_are_usage_errors(tiny, kwargs):
    with pytest.raises(UsageError):
        LLMPolicy(tiny, Prompt("Task.", ["left", "right"]), **kwargs)
