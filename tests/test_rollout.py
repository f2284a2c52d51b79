"""Rollouts, evaluation summaries, trajectory files and few-shot examples drawn from them."""

from __future__ import annotations

import json

import pytest

from llmrl.baselines import baseline_prompt, few_shot_examples, make_baseline
from llmrl.cards import get_card
from llmrl.errors import UsageError
from llmrl.evaluate import evaluate, portability
from llmrl.policy import Policy, PolicyStats
from llmrl.rollout import load_trajectories, rollout, save_trajectories


class FirstWord(Policy):
    """Always the first action; records the batch sizes it was called with."""

    def __init__(self, words):
        self.action_words, self.stats, self.batches = words, PolicyStats(), []

    def act(self, texts, slots=None):
        self.batches.append(len(texts))
        self.stats.decisions += len(texts)
        return [0] * len(texts)


def test_episodes_are_seeded_independently_of_env_count():
    card, _ = get_card("CartPole-v1")
    one = rollout(FirstWord(card.action_words), card, episodes=6, seed=5, n_envs=1)
    policy = FirstWord(card.action_words)
    four = rollout(policy, card, episodes=6, seed=5, n_envs=4)
    assert [t.seed for t in four] == list(range(5, 11))
    assert [(t.ret, t.steps[0].text) for t in one] == [(t.ret, t.steps[0].text) for t in four]
    assert max(policy.batches) == 4  # four environments answered in one call
    assert all(t.terminated and not t.truncated for t in four)


def test_max_steps_truncates():
    card, _ = get_card("CartPole-v1")
    trajs = rollout(make_baseline("random", card, None, seed=0), card, episodes=3, seed=0, n_envs=2, max_steps=4)
    assert all(t.length <= 4 for t in trajs)
    assert any(t.truncated for t in trajs)


def test_evaluate_summary_is_reproducible():
    card, _ = get_card("CartPole-v1")
    runs = [evaluate(make_baseline("random", card, None, seed=7), card, "random", None, episodes=5, seed=7,
                     n_envs=3, progress=False)[0].summary() for _ in range(2)]
    for key in ("returns", "mean_return", "std_return", "mean_length"):
        assert runs[0][key] == runs[1][key]
    assert runs[0]["episodes"] == len(runs[0]["returns"]) == 5
    assert runs[0]["mean_return"] == pytest.approx(sum(runs[0]["returns"]) / 5)
    assert runs[0]["decisions"] == sum(runs[0]["lengths"])


class FirstObservationAction(FirstWord):
    """Like FirstWord, but reads raw observations, as PPO does."""

    reads_observations = True

    def act_on_observations(self, observations, slots):
        return self.act([""] * len(observations))


def test_portability_plays_the_other_variants():
    card, _ = get_card("CartPole-v1")
    got = portability(FirstWord(card.action_words), card, None, episodes=3, seed=11, n_envs=2)
    direct = evaluate(FirstWord(card.action_words), card, "x", None, episodes=3, seed=11, n_envs=2,
                      variant="heavy-long-pole", progress=False)[0]
    default = evaluate(FirstWord(card.action_words), card, "x", None, episodes=3, seed=11, progress=False)[0]
    assert got == {"heavy-long-pole": {"mean_return": direct.mean_return, "returns": direct.returns}}
    assert direct.returns != default.returns  # the heavier, longer pole falls at another pace
    assert portability(FirstWord(card.action_words), card, "heavy-long-pole", episodes=3) == {}
    # a policy reading raw observations cannot play a lake of another size; a text policy can
    lake, _ = get_card("FrozenLake-v1")
    skipped = portability(FirstObservationAction(lake.action_words), lake, None, episodes=2)
    assert set(skipped) == {"8x8", "not-slippery"} and "observation space Discrete(64)" in skipped["8x8"]["skipped"]
    assert len(skipped["not-slippery"]["returns"]) == 2  # same 4x4 grid: playable
    assert len(portability(FirstWord(lake.action_words), lake, None, episodes=2)["8x8"]["returns"]) == 2


def test_trajectory_file_round_trip_and_few_shot(tmp_path):
    card, _ = get_card("CartPole-v1")
    trajs = rollout(make_baseline("random", card, None, seed=1), card, episodes=3, seed=1, n_envs=2)
    path = tmp_path / "t.jsonl"
    save_trajectories(path, trajs, card.action_words)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["steps"][0]["action"] in card.action_words and rows[0]["return"] == trajs[0].ret
    back = load_trajectories(path, card.action_words)
    assert [(t.seed, t.ret, t.length) for t in back] == [(t.seed, t.ret, t.length) for t in trajs]
    shots = few_shot_examples(card, 4, path)
    best = max(trajs, key=lambda t: t.ret)
    assert len(shots) == 4 and shots[0] == (best.steps[0].text, card.action_words[best.steps[0].action])
    prompt = baseline_prompt("few-shot", card, 2, path)
    assert len(prompt.shots) == 2


def test_bad_trajectory_file(tmp_path):
    card, _ = get_card("CartPole-v1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seed": 0, "steps": [{"text": "x", "situation": "s", "action": "jump", "reward": 1}]}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1"):
        load_trajectories(bad, card.action_words)
    with pytest.raises(UsageError, match="cannot read"):
        load_trajectories(tmp_path / "missing.jsonl", card.action_words)


def test_card_demonstrations_feed_few_shot():
    card, _ = get_card("CartPole-v1")
    assert few_shot_examples(card, 2) == list(card.demonstrations[:2])
    with pytest.raises(UsageError):
        few_shot_examples(card, 0)


@pytest.mark.parametrize("name", ["zero-shot", "few-shot", "chain-of-thought", "expert-hint"])
def test_prompt_baselines_differ_only_in_their_prompt(name):
    card, _ = get_card("CartPole-v1")
    prompt = baseline_prompt(name, card)
    assert prompt.action_words == card.action_words and card.instructions in prompt.system_text()
    assert (card.hint in prompt.system_text()) == (name == "expert-hint")
    assert bool(prompt.shots) == (name == "few-shot")
    assert prompt.reasoning == (name == "chain-of-thought")


def test_rollout_records_the_cards_potential(tmp_path):
    card, _ = get_card("MountainCar-v0")
    trajs = rollout(FirstWord(card.action_words), card, episodes=2, seed=0, n_envs=2, max_steps=5)
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    first = card.potential(obs, env)
    for _ in range(5):
        obs, *_ = env.step(card.actions[card.action_words[0]])
    assert trajs[0].steps[0].potential == first and trajs[0].end_potential == card.potential(obs, env)
    path = tmp_path / "t.jsonl"
    save_trajectories(path, trajs, card.action_words)
    back = load_trajectories(path, card.action_words)
    assert [s.potential for s in back[1].steps] == [s.potential for s in trajs[1].steps]
    assert back[1].end_potential == trajs[1].end_potential
    cartpole, _ = get_card("CartPole-v1")
    (plain,) = rollout(FirstWord(cartpole.action_words), cartpole, episodes=1, seed=0)
    assert plain.terminated and plain.end_potential is None and {s.potential for s in plain.steps} == {None}
