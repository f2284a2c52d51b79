"""Feedback to knowledge on synthetic trajectories whose action values are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrl.knowledge import (Extraction, KnowledgeBase, action_values, n_step_returns, returns_to_go, spread,
                             texts_by_situation)
from llmrl.policy import Policy, PolicyStats
from llmrl.rollout import Step, Trajectory

WORDS = ["left", "right"]


class Prefers(Policy):
    """A policy whose action distribution is fixed per situation (read from the text)."""

    def __init__(self, probs: dict[str, list[float]]):
        self.action_words, self.stats, self.probs = WORDS, PolicyStats(), probs

    def scores(self, texts):
        return torch.log(torch.tensor([self.probs[t.split("|")[0]] for t in texts]))

    def act(self, texts, slots=None):
        return self.scores(texts).argmax(-1).tolist()


def bandit(rng, situation, means, n, noise=0.5, seed0=0):
    """One-step episodes: action a in ``situation`` pays means[a] plus Gaussian noise."""
    out = []
    for i in range(n):
        a = i % len(means)
        r = means[a] + rng.normal(0, noise)
        out.append(Trajectory(seed0 + i, [Step(f"{situation}|{i}", situation, a, float(r))], terminated=True))
    return out


def test_returns_to_go_discounts_backwards():
    np.testing.assert_allclose(returns_to_go([1.0, 2.0, 4.0], 0.5), [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0])


def test_action_values_recover_known_means_and_standard_errors():
    rng = np.random.default_rng(0)
    values = action_values(bandit(rng, "s", [1.0, 3.0], 2000, noise=1.0), WORDS, gamma=0.9)["s"]
    assert values["left"].n == values["right"].n == 1000
    assert values["left"].mean == pytest.approx(1.0, abs=0.1) and values["right"].mean == pytest.approx(3.0, abs=0.1)
    assert values["right"].se == pytest.approx(1.0 / np.sqrt(1000), rel=0.15)


def test_truncated_tail_is_left_out():
    steps = [Step(f"s|{i}", "s", 0, 1.0) for i in range(30)]
    values = action_values([Trajectory(0, steps, truncated=True)], WORDS, gamma=0.9)  # horizon 10
    assert values["s"]["left"].n == 20
    assert action_values([Trajectory(0, steps, terminated=True)], WORDS, gamma=0.9)["s"]["left"].n == 30


def test_n_step_returns_bootstrap_with_the_potential():
    # rewards 1, 2, 4 with potentials 10, 20, 30 and 40 after the last step (truncated)
    steps = [Step(f"s|{i}", "s", 0, r, phi) for i, (r, phi) in enumerate([(1.0, 10.0), (2.0, 20.0), (4.0, 30.0)])]
    t = Trajectory(0, steps, truncated=True, end_potential=40.0)
    np.testing.assert_allclose(n_step_returns(t, 0.5, 2), [1 + 0.5 * 2 + 0.25 * 30 - 10,
                                                          2 + 0.5 * 4 + 0.25 * 40 - 20,
                                                          4 + 0.5 * 40 - 30])
    # a terminal state is worth 0 whatever the card says; no potential counts as 0
    t.terminated, t.truncated = True, False
    assert n_step_returns(t, 0.5, 2)[2] == pytest.approx(4 - 30)
    plain = Trajectory(0, [Step("s|0", "s", 0, 1.0), Step("s|1", "s", 0, 1.0)], terminated=True)
    np.testing.assert_allclose(n_step_returns(plain, 0.5, 1), [1.0, 1.0])


def sparse_chain(rng, episodes: int, length: int = 40) -> list[Trajectory]:
    """A walk on a line that never reaches its goal (reward -1 every step): 'right' moves toward it,
    'left' away; the potential is minus the distance to the goal."""
    out = []
    for e in range(episodes):
        pos, steps = 0, []
        for i in range(length):
            a = int(rng.integers(2))
            steps.append(Step(f"s|{e}-{i}", "s", a, -1.0, float(pos - 100)))
            pos += 1 if a else -1
        out.append(Trajectory(e, steps, truncated=True, end_potential=float(pos - 100)))
    return out


def test_potential_gives_signal_where_monte_carlo_returns_have_none():
    feedback = sparse_chain(np.random.default_rng(3), 20)
    mc = action_values(feedback, WORDS, gamma=0.9)["s"]
    assert abs(mc["left"].mean - mc["right"].mean) < 0.1  # returns-to-go depend on the time left only
    plain = KnowledgeBase(Extraction(gamma=0.9, min_support=5))
    assert not plain.update(feedback, Prefers({"s": [0.5, 0.5]}), 1)["insert"]
    shaped = action_values(feedback, WORDS, gamma=0.9, n_step=5)["s"]
    assert shaped["left"].n + shaped["right"].n == 800  # truncation is bootstrapped, nothing dropped
    assert shaped["right"].mean - shaped["left"].mean == pytest.approx(2 * 0.9**5, abs=0.3)  # 2 nearer, 5 steps on
    kb = KnowledgeBase(Extraction(gamma=0.9, min_support=5, n_step=5))
    changes = kb.update(feedback, Prefers({"s": [0.5, 0.5]}), iteration=1)
    assert [(i.situation, i.action, i.kind) for i in changes["insert"]] == [("s", "right", "insert")]


def test_items_insert_modify_retain_and_nothing_without_evidence():
    rng = np.random.default_rng(1)
    feedback = (bandit(rng, "wrong", [0.0, 2.0], 40) + bandit(rng, "unsure", [0.0, 2.0], 40)
                + bandit(rng, "right", [2.0, 0.0], 40) + bandit(rng, "tie", [1.0, 1.0], 40))
    policy = Prefers({"wrong": [0.9, 0.1], "unsure": [0.52, 0.48], "right": [0.9, 0.1], "tie": [0.9, 0.1]})
    kb = KnowledgeBase(Extraction(gamma=0.9, z=2.0, min_support=5, max_examples=4))
    changes = kb.update(feedback, policy, iteration=1)
    assert {i.situation: (i.action, i.kind) for i in kb.items.values()} == {
        "wrong": ("right", "modify"), "unsure": ("right", "insert"), "right": ("left", "retain")}
    item = kb.items["wrong"]
    assert item.value_gap == pytest.approx(2.0, abs=0.4) and item.support == 40 and item.iteration == 1
    assert len(item.examples) == 4 and all(t.startswith("wrong|") for t in item.examples)
    assert item.values["right"]["n"] == 20
    assert [i.situation for i in changes["modify"]] == ["wrong"] and not changes["erase"]


def test_contradicting_evidence_erases_and_replaces_an_item():
    rng = np.random.default_rng(2)
    kb = KnowledgeBase(Extraction(gamma=0.9, min_support=5))
    policy = Prefers({"s": [0.9, 0.1]})
    kb.update(bandit(rng, "s", [0.0, 2.0], 40), policy, iteration=1)
    assert kb.items["s"].action == "right"
    # pooled with the first batch, a batch as large that disagrees only cancels it out: no erase
    assert not kb.update(bandit(rng, "s", [2.0, 0.0], 40), Prefers({"s": [0.1, 0.9]}), iteration=2)["erase"]
    changes = kb.update(bandit(rng, "s", [4.0, 0.0], 200), Prefers({"s": [0.1, 0.9]}), iteration=3)
    assert [i.action for i in changes["erase"]] == ["right"] and kb.items["s"].action == "left"
    assert kb.items["s"].kind == "modify" and kb.erased[0].iteration == 1 and kb.items["s"].iteration == 3
    assert kb.erase("s").action == "left" and not kb.items


def test_latest_batch_only_without_pooling():
    rng = np.random.default_rng(4)
    kb = KnowledgeBase(Extraction(gamma=0.9, min_support=5, pool=False, erase_z=2.0))
    kb.update(bandit(rng, "s", [0.0, 2.0], 40), Prefers({"s": [0.9, 0.1]}), iteration=1)
    changes = kb.update(bandit(rng, "s", [2.0, 0.0], 40), Prefers({"s": [0.1, 0.9]}), iteration=2)
    assert [i.action for i in changes["erase"]] == ["right"] and kb.items["s"].action == "left"


def test_min_support_blocks_thin_evidence():
    rng = np.random.default_rng(3)
    kb = KnowledgeBase(Extraction(gamma=0.9, min_support=30))
    kb.update(bandit(rng, "s", [0.0, 5.0], 20), Prefers({"s": [0.9, 0.1]}), iteration=1)
    assert not kb.items


def test_helpers():
    assert spread(list("abcdefgh"), 4) == ["a", "c", "e", "g"] and spread(["a"], 4) == ["a"]
    t = Trajectory(0, [Step("x", "s", 0, 0.0), Step("y", "s", 0, 0.0), Step("x", "s", 1, 0.0)])
    assert texts_by_situation([t]) == {"s": ["x", "y"]}


def test_the_loop_config_sets_every_extraction_threshold_with_the_same_defaults():
    """One place for the defaults: the loop builds its Extraction from LoopConfig field by field."""
    from dataclasses import fields

    from llmrl.config import LoopConfig

    for f in fields(Extraction):
        assert LoopConfig.model_fields[f.name].default == f.default, f.name


def test_an_action_held_before_comes_back_on_the_reinstate_margin():
    def run(reinstate_z):
        rng = np.random.default_rng(5)
        kb = KnowledgeBase(Extraction(gamma=0.9, min_support=5, pool=False, erase_z=6.0, reinstate_z=reinstate_z))
        kb.update(bandit(rng, "s", [0.0, 2.0], 40), Prefers({"s": [0.9, 0.1]}), iteration=1)  # right
        kb.update(bandit(rng, "s", [4.0, 0.0], 200), Prefers({"s": [0.1, 0.9]}), iteration=2)  # left, by far
        assert kb.items["s"].action == "left" and kb.erased[-1].action == "right"
        # the task returns: right is better again, by 4.8 standard errors: above 2, below erase_z's 6
        kb.update(bandit(np.random.default_rng(5), "s", [0.0, 0.6], 40), Prefers({"s": [0.9, 0.1]}), iteration=3)
        return kb.items["s"].action

    assert run(None) == "left"  # erase_z alone: the margin is too small to replace the held item
    assert run(2.0) == "right"  # right was held before: reinstated


def test_the_reinstate_margin_is_only_for_actions_held_before():
    rng = np.random.default_rng(6)
    kb = KnowledgeBase(Extraction(gamma=0.9, min_support=5, pool=False, erase_z=6.0, reinstate_z=0.5))
    kb.update(bandit(rng, "s", [0.0, 2.0], 40), Prefers({"s": [0.9, 0.1]}), iteration=1)  # right, never erased
    kb.update(bandit(rng, "s", [0.6, 0.0], 40), Prefers({"s": [0.1, 0.9]}), iteration=2)
    assert kb.items["s"].action == "right" and not kb.erased
