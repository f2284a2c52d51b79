"""PPO baseline: Zoo hyper-parameters, curves from the shared evaluator, pickle-free save and load."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from llmrl.baselines.ppo import (
    CONFIG_DIR,
    PPOHyperparameters,
    PPOPolicy,
    PPOResult,
    load_hyperparameters,
    load_ppo_policy,
    train_ppo,
)
from llmrl.cards import all_cards, get_card
from llmrl.config import load_yaml
from llmrl.errors import UsageError
from llmrl.evaluate import evaluate
from llmrl.evaluate import eval_seed

pytestmark = pytest.mark.usefixtures("one_thread")

#: Small rollouts (2 envs x 64 steps) so that a few hundred steps are a few updates.
TINY = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2}


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> PPOResult:
    """600 steps with VecNormalize on, evaluated every 256 steps; saved to a folder."""
    out = tmp_path_factory.mktemp("ppo") / "cartpole"
    return train_ppo("CartPole-v1", seed=1, total_steps=600, eval_every=256, eval_episodes=4, eval_max_steps=100,
                     out=out, hyperparameters={**TINY, "normalize": True})


def observations(env: str, n: int) -> list:
    """Raw observations of ``env`` under random play, from several seeds."""
    card, variant = get_card(env)
    game = card.make_env(variant)
    game.action_space.seed(0)
    seen, seed = [], 0
    obs, _ = game.reset(seed=seed)
    while len(seen) < n:
        seen.append(obs)
        obs, _, terminated, truncated, _ = game.step(game.action_space.sample())
        if terminated or truncated:
            seed += 1
            obs, _ = game.reset(seed=seed)
    return seen


def test_zoo_hyperparameters_for_cartpole():
    hp = load_hyperparameters("CartPole-v1")
    zoo = {"n_envs": 8, "n_timesteps": 100_000, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 256,
           "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0, "learning_rate": "lin_0.001",
           "clip_range": "lin_0.2", "normalize": False}
    assert {k: hp[k] for k in zoo} == zoo
    assert "rl-baselines3-zoo" in hp["source"] and "CartPole-v1" in hp["source"]
    # Left out by the Zoo, so SB3's defaults.
    assert (hp["vf_coef"], hp["max_grad_norm"]) == (0.5, 0.5)


def test_missing_hyperparameter_folder_is_a_usage_error(tmp_path):
    # SB3's defaults in its place would train another PPO than the one the report names
    with pytest.raises(UsageError, match="hyper-parameter folder .* is missing"):
        load_hyperparameters("CartPole-v1", config_dir=tmp_path / "ppo")


def test_lin_schedules_decay_linearly_to_zero():
    kwargs = PPOHyperparameters(**load_hyperparameters("CartPole-v1")).ppo_kwargs()
    lr, clip = kwargs["learning_rate"], kwargs["clip_range"]
    assert isinstance(lr, LinearSchedule) and isinstance(clip, LinearSchedule)
    # progress_remaining 1 at the start, 0 at the end of the budget, below 0 after an overshooting rollout.
    assert [lr(p) for p in (1.0, 0.5, 0.0, -0.1)] == pytest.approx([1e-3, 5e-4, 0.0, 0.0])
    assert clip(0.25) == pytest.approx(0.05)
    assert PPOHyperparameters(learning_rate="1e-3").ppo_kwargs()["learning_rate"] == 1e-3


def test_normalize_and_defaults(tmp_path):
    mountain = load_hyperparameters("MountainCar-v0")
    assert mountain["normalize"] is True and (mountain["n_envs"], mountain["n_steps"]) == (16, 16)
    assert mountain["batch_size"] == 64  # not in the Zoo entry: SB3's default
    fallback = load_hyperparameters("CartPole-v1", config_dir=tmp_path)
    assert fallback["source"] == "stable-baselines3 defaults"
    assert (fallback["n_envs"], fallback["n_steps"], fallback["learning_rate"]) == (1, 2048, 3e-4)


def test_every_shipped_file_names_a_card_and_loads():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= {"CartPole-v1", "MountainCar-v0", "Acrobot-v1", "LunarLander-v3",
                                       "FrozenLake-v1", "Taxi-v4", "BabyAI-GoToRedBall-v0", "BabyAI-GoToLocal-v0"}
    cards = all_cards()
    families = {c.family for c in cards.values() if c.family}
    for f in files:
        observation = "pixels" if f.stem.endswith("-pixels") else None
        name = f.stem.removesuffix("-pixels")
        users = [k for k, c in cards.items() if name in (k.replace("/", "_"), c.family)]
        assert users, f"{f.name} names no card or card family ({', '.join(sorted(families))})"
        assert all(observation is None or observation in cards[k].observations for k in users)
        assert load_hyperparameters(users[0], observation)["source"] == load_yaml(f)["source"]


def test_curve_points_and_evaluator_returns(cartpole):
    assert cartpole.env_steps == math.ceil(600 / 128) * 128  # whole rollouts of 2 envs x 64 steps
    assert [p["env_steps"] for p in cartpole.curve] == [0, 256, 512, cartpole.env_steps]
    for point in cartpole.curve:
        assert len(point["returns"]) == 4 and all(1 <= r <= 100 for r in point["returns"])
        assert point["mean_return"] == pytest.approx(np.mean(point["returns"]))
        assert point["std_return"] == pytest.approx(np.std(point["returns"]))
    assert cartpole.final_returns == cartpole.curve[-1]["returns"]
    assert cartpole.final_mean_return == cartpole.curve[-1]["mean_return"]
    # The final point is the shared evaluator's, on the loop's evaluation seeds.
    card, _ = get_card("CartPole-v1")
    again, trajectories = evaluate(cartpole.policy, card, "ppo", None, 4, seed=eval_seed(1), max_steps=100,
                                   progress=False)
    assert again.returns == cartpole.final_returns
    assert [t.seed for t in trajectories] == [eval_seed(1) + i for i in range(4)]
    assert cartpole.policy.stats.decisions >= sum(again.lengths)


def test_saved_files(cartpole):
    out = Path(cartpole.model_path)
    assert (out / "ppo.zip").stat().st_size > 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    record = json.loads((out / "ppo.json").read_text())
    assert record["env"] == "CartPole-v1" and record["seed"] == 1
    assert record["curve"] == cartpole.curve and record["hyperparameters"] == cartpole.hyperparameters
    tensors = load_file(out / "policy.safetensors")
    norm = cartpole.policy.obs_normalization
    assert norm is not None and not np.allclose(norm.var, 1.0)  # statistics were gathered
    assert np.array_equal(tensors["obs_rms.mean"].numpy(), norm.mean)
    assert np.array_equal(tensors["obs_rms.var"].numpy(), norm.var)


def test_load_reproduces_actions_bit_for_bit(cartpole):
    loaded = load_ppo_policy(cartpole.model_path)
    obs = observations("CartPole-v1", 300)
    batch = loaded.prepare(obs)
    assert np.array_equal(batch, cartpole.policy.prepare(obs))
    with torch.no_grad():
        logits = [p.net.get_distribution(torch.as_tensor(batch)).distribution.logits
                  for p in (cartpole.policy, loaded)]
    assert torch.equal(*logits)
    actions = loaded.act_on_observations(obs, list(range(len(obs))))
    assert actions == cartpole.policy.act_on_observations(obs, list(range(len(obs))))
    assert set(actions) == {0, 1}
    # The normalisation is SB3's VecNormalize, with the saved statistics.
    card, _ = get_card("CartPole-v1")
    vec = VecNormalize(DummyVecEnv([card.make_env]), training=False)
    vec.obs_rms.mean, vec.obs_rms.var = loaded.obs_normalization.mean, loaded.obs_normalization.var
    assert np.array_equal(vec.normalize_obs(np.stack(obs)), batch)


def test_sampled_actions_follow_the_policy_and_replay_from_the_seed(cartpole):
    """sample=True draws from the action distribution with the policy's own generator, which reseed restarts."""
    loaded = load_ppo_policy(cartpole.model_path)
    assert not loaded.sample  # CartPole's settings: greedy
    sampler = PPOPolicy(loaded.env, loaded.net, loaded.obs_normalization, sample=True)
    obs = observations("CartPole-v1", 1) * 4000
    with torch.no_grad():
        p_right = float(loaded.net.get_distribution(torch.as_tensor(loaded.prepare(obs[:1]))).distribution.probs[0, 1])
    sampler.reseed(3)
    first = sampler.act_on_observations(obs, list(range(len(obs))))
    share = sum(first) / len(first)
    assert 0.05 < p_right < 0.95 and abs(share - p_right) < 4 * (p_right * (1 - p_right) / len(obs)) ** 0.5
    sampler.reseed(3)
    assert sampler.act_on_observations(obs, list(range(len(obs)))) == first
    card, _ = get_card("CartPole-v1")
    runs = [evaluate(sampler, card, "ppo", None, 2, seed=11, max_steps=50, progress=False)[0].returns
            for _ in range(2)]
    assert runs[0] == runs[1]  # evaluation reseeds: the same seed, the same episodes and actions


def test_evaluation_leaves_training_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runs = [train_ppo("CartPole-v1", seed=2, total_steps=256, eval_every=every, eval_episodes=2,
                      eval_max_steps=20, hyperparameters=TINY) for every in (None, 64)]
    assert not list(tmp_path.iterdir())  # no output folder: SB3's logger leaves none in the temp dir either
    assert [len(r.curve) for r in runs] == [2, 5]
    nets = [r.policy.net.state_dict() for r in runs]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_discrete_observations_frozenlake():
    result = train_ppo("FrozenLake-v1", seed=0, total_steps=300, eval_episodes=3, hyperparameters=TINY)
    assert result.env_steps == 384 and [p["env_steps"] for p in result.curve] == [0, 384]
    assert all(r in (0.0, 1.0) for r in result.final_returns)
    assert result.policy.net.observation_space.n == 16  # SB3 one-hot encodes the state
    actions = result.policy.act_on_observations([0, 5, 15], [0, 1, 2])
    assert all(0 <= a < 4 for a in actions)


def test_babyai_trains_saves_and_loads(tmp_path):
    result = train_ppo("BabyAI-GoToRedBall-v0", seed=0, total_steps=256, eval_episodes=2, eval_max_steps=30,
                       out=tmp_path / "babyai", hyperparameters=TINY)
    net = result.policy.net
    assert net.observation_space.shape == (7 * 7 * 3 + 96 * 28,)  # FlatObsWrapper: view plus mission
    assert net.action_space.n == 3  # the card's three action words
    assert all(0.0 <= r <= 1.0 for r in result.final_returns)
    loaded = load_ppo_policy(tmp_path / "babyai")
    obs = observations("BabyAI-GoToRedBall-v0", 40)
    assert loaded.act_on_observations(obs, list(range(40))) == result.policy.act_on_observations(obs, list(range(40)))


@pytest.mark.parametrize("kwargs, message", [
    ({"env": "NoSuchEnv-v0"}, "no card"),
    ({"total_steps": 0}, "total_steps"),
    ({"eval_every": 0}, "eval_every"),
    ({"eval_max_steps": 0}, "eval_max_steps"),
    ({"hyperparameters": {"n_stepz": 3}}, "n_stepz"),
    ({"hyperparameters": {"learning_rate": "lin_fast"}}, "learning_rate"),
    ({"hyperparameters": {"n_envs": 0}}, "n_envs"),
    ({"env": "FrozenLake-v1", "hyperparameters": {"normalize": True}}, "normalize"),
])
def test_bad_training_input(kwargs, message):
    args = {"env": "CartPole-v1", "seed": 0, "total_steps": 64, **kwargs}
    with pytest.raises(UsageError, match=message):
        train_ppo(**args)


@pytest.mark.parametrize("text, message", [
    ("n_steps: 32\nbatchsize: 64\n", "batchsize"),
    ("learning_rate: lin_\n", "learning_rate"),
    ("n_steps: [32\n", "malformed YAML"),
    ("- n_steps\n", "mapping"),
])
def test_bad_yaml(tmp_path, text, message):
    (tmp_path / "CartPole-v1.yaml").write_text(text)
    with pytest.raises(UsageError, match=message):
        load_hyperparameters("CartPole-v1", config_dir=tmp_path)


def test_load_needs_saved_files(tmp_path):
    with pytest.raises(UsageError, match="cannot load a PPO policy"):
        load_ppo_policy(tmp_path)
