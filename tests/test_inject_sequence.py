"""Injecting, evaluating and undoing every strategy in turn leaves the model exactly as it started."""

from __future__ import annotations

import hashlib

import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.evaluate import evaluate
from llmrl.inject.adapter import AdapterInjector
from llmrl.inject.context import ContextInjector
from llmrl.inject.weights import WeightsInjector
from llmrl.knowledge import KnowledgeItem
from tests.helpers import first_texts_by_situation, fresh_tiny


def fingerprint(model: torch.nn.Module) -> tuple[str, tuple]:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest(), tuple((n, type(m).__name__) for n, m in model.named_modules())


def test_inject_evaluate_undo_each_strategy_restores_the_model(monkeypatch, tmp_path):
    lm = fresh_tiny(11, "tiny-seq")
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path))  # fresh key statistics for this tiny model
    card, _ = get_card("CartPole-v1")
    texts = first_texts_by_situation("CartPole-v1", 30)
    items = [KnowledgeItem(s, a, 1.0, 20, examples=texts[s][:4])
             for s, a in [("the pole is falling to the left", "right"), ("the pole is falling to the right", "left")]]
    policy = make_baseline("zero-shot", card, lm)
    start = fingerprint(lm.model)
    probe = [t for i in items for t in i.examples]
    scores = policy.scores(probe).clone()
    injectors = [ContextInjector(demos=1, k=1), AdapterInjector(steps=3, batch_size=4),
                 WeightsInjector(steps=3, stats_tokens=256, stats_prompts=8)]
    for injector in injectors:
        edit = injector.inject(policy, items)
        assert not torch.equal(policy.scores(probe), scores), f"{injector.name} changed nothing"
        evaluate(policy, card, injector.name, lm.name, episodes=2, seed=0, n_envs=2, progress=False)
        edit.undo()
        assert fingerprint(lm.model) == start, f"{injector.name} left the model changed"
        torch.testing.assert_close(policy.scores(probe), scores, atol=0, rtol=0)
