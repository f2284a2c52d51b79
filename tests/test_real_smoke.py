"""A short smoke set on the real default model (runs in CI; a few seconds each)."""

from __future__ import annotations

import json

import pytest
import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.cli import main
from llmrl.policy import LLMPolicy
from tests.helpers import reference_scores, start_texts

pytestmark = pytest.mark.real


def test_real_scores_match_plain_forward(real):
    card, texts = start_texts("MountainCar-v0", 3)  # multi-token action words
    policy = make_baseline("expert-hint", card, real)
    assert isinstance(policy, LLMPolicy)
    torch.testing.assert_close(policy.scores(texts), reference_scores(real, policy.prompt, texts, "word"),
                               atol=1e-4, rtol=0)


def test_real_zero_shot_cartpole_eval(capsys, real):
    code = main(["eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--episodes", "2", "--json"])
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and result["model"] == "SmolLM2-135M-Instruct" and len(result["returns"]) == 2
    assert all(r >= 1 for r in result["returns"]) and result["decisions_per_s"] > 0


def test_real_generate_mode_answers_are_parsed_or_counted(real):
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, real, mode="generate", max_new_tokens=6)
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    texts = [card.text(obs, env)[0]]
    for _ in range(3):
        obs, *_ = env.step(0)
        texts.append(card.text(obs, env)[0])
    actions = policy.act(texts, slots=[0, 1, 2, 3])
    parsed = [policy.parse(answer) for answer in policy.last_answers]
    assert len(parsed) == 4 and all("<|im_end|>" not in answer for answer in policy.last_answers)
    assert actions == [policy.default_action if p is None else p for p in parsed]
    assert policy.stats.fallbacks == parsed.count(None)
