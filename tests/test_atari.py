"""Tests of the Atari cards (envs/atari.py) on real ALE states read through OCAtari.

Each card is checked on what a reader of its text relies on: that its action
words do what they say on the real game (the paddle goes up on "move up"),
that its numbers and situations agree with the objects in RAM, and, where a
fixed situation -> action table can play the game, that the situations carry
what the table needs (it must beat random play by a wide margin).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest

from llmrl.cards import Card, get_card
from llmrl.errors import UsageError

if os.environ.get("CI") == "true":
    import ocatari  # noqa: F401  (CI installs the atari extra: a missing OCAtari must fail there)
else:
    pytest.importorskip("ocatari", reason="the Atari cards need the atari extra: pip install -e '.[atari]'")

import llmrl.envs.atari as atari  # noqa: E402  (after the extra check above)

STACK, AtariCard, ObjectReader = atari.STACK, atari.AtariCard, atari.ObjectReader

GAMES = ("Pong", "Breakout", "Freeway", "Boxing", "SpaceInvaders", "Asterix")

TABLES: dict[str, dict[str, str]] = {
    "Pong": {
        **{f"the ball is above your paddle and moving {w}": "move up" for w in ("toward you", "away")},
        **{f"the ball is below your paddle and moving {w}": "move down" for w in ("toward you", "away")},
        **{f"the ball is level with your paddle and moving {w}": "stay" for w in ("toward you", "away")},
        "no ball is in play": "stay",
    },
    "Breakout": {
        **{f"the ball is left of your paddle and {w}": "move left" for w in ("falling", "rising")},
        **{f"the ball is right of your paddle and {w}": "move right" for w in ("falling", "rising")},
        **{f"the ball is over your paddle and {w}": "stay" for w in ("falling", "rising")},
        "no ball is in play": "fire",
    },
    "Freeway": {
        "the lane ahead is clear and your lane is clear": "go up",
        "the lane ahead is clear and a car is coming in your lane": "go up",
        "a car is coming in the lane ahead and your lane is clear": "wait",
        "a car is coming in the lane ahead and a car is coming in your lane": "go down",
    },
    "Boxing": {
        "the opponent is within reach": "punch",
        "the opponent is above you": "move up",
        "the opponent is below you": "move down",
        "the opponent is to your left, out of reach": "move left",
        "the opponent is to your right, out of reach": "move right",
    },
    "SpaceInvaders": {
        "a bomb is falling at you": "move left",
        "an alien is straight above you": "fire",
        "the nearest alien is to your left": "move left",
        "the nearest alien is to your right": "move right",
        "no alien is left": "stay",
    },
    "Asterix": {
        "a lyre is close in your lane": "move up",
        "an item is to your left in your lane": "move left",
        "an item is to your right in your lane": "move right",
        "an item is in the lane above": "move up",
        "an item is in the lane below": "move down",
        "nothing is near": "stay",
    },
}
# Where each card's demonstrations come from: (seed, steps of table play), in the card's order.
DEMO_STATES = {
    "Pong": [(0, 18), (0, 16), (0, 36)],
    "Breakout": [(0, 9), (0, 24), (0, 3)],
    "Freeway": [(0, 1), (0, 43), (0, 514)],
    "Boxing": [(0, 16), (0, 1), (0, 13)],
    "SpaceInvaders": [(0, 1), (0, 41), (0, 42)],
    "Asterix": [(0, 16), (0, 203), (0, 1)],
}


def card_of(game: str) -> Card:
    card = get_card(f"ALE/{game}-v5")[0]
    assert isinstance(card, AtariCard)
    return card


def play(card: Card, env: gym.Env, obs: object, choose: Callable[[str], str], steps: int) -> tuple[object, float]:
    """``steps`` decisions of ``choose(situation) -> word``; returns the last observation and the return."""
    total = 0.0
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(card.actions[choose(card.situation(obs, env))])
        total += float(reward)
        if terminated or truncated:
            break
    return obs, total


def numbers(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return int(match.group(1))


@pytest.mark.parametrize("game", GAMES)
def test_card_is_well_formed_on_ale_v5(game: str) -> None:
    card = card_of(game)
    assert card.env_id == f"ALE/{game}-v5"
    env = card.make_env()
    spec = env.spec.kwargs
    # ALE v5's protocol (Machado et al. 2018), not overridden by the card.
    assert (spec["frameskip"], spec["repeat_action_probability"], spec["full_action_space"]) == (4, 0.25, False)
    meanings = env.unwrapped.get_action_meanings()
    for word, index in card.actions.items():
        assert meanings[index] == card.words[word]
    assert TABLES[game].keys() == set(card.situations)
    assert set(TABLES[game].values()) <= set(card.actions)
    assert card.hint and card.default_action in card.actions


@pytest.mark.parametrize("game", GAMES)
def test_observations_for_ppo(game: str) -> None:
    """The default observation is OCAtari's object vector over the last decisions; "pixels" the grey frames."""
    card = card_of(game)
    objects, pixels = card.make_env(), card.make_env(observation="pixels")
    obs, _ = objects.reset(seed=3)
    frames, _ = pixels.reset(seed=3)
    assert obs.shape == objects.observation_space.shape and obs.shape[0] == STACK
    assert objects.observation_space.contains(obs)
    assert frames.shape == (STACK, 84, 84) and frames.dtype == np.uint8 and frames.max() > 0
    for _ in range(20):  # the same game under both: same seed, same actions, same objects
        action = card.actions[card.default_action_word]
        previous = obs
        obs, *_ = objects.step(action)
        frames, *_ = pixels.step(action)
        assert card.text(obs, objects) == card.text(frames, pixels)
        np.testing.assert_array_equal(obs[:-1], previous[1:])  # the stack shifts by one decision
    with pytest.raises(UsageError, match="gives no 'voxels' observation"):
        card.make_env(observation="voxels")


def test_pong_reads_paddle_and_ball() -> None:
    card = card_of("Pong")
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    text, situation = card.text(obs, env)
    assert situation == "no ball is in play" and "No ball in play." in text
    height = numbers(text, r"height (\d+) of 210")
    obs, _ = play(card, env, obs, lambda s: "move up", 6)  # RIGHT moves Pong's paddle up
    up = numbers(card.text(obs, env)[0], r"height (\d+) of 210")
    obs, _ = play(card, env, obs, lambda s: "move down", 6)
    down = numbers(card.text(obs, env)[0], r"height (\d+) of 210")
    assert up < height and down > up
    while card.situation(obs, env) == "no ball is in play":
        obs, _ = play(card, env, obs, lambda s: "stay", 1)
    ball = next(o for o in card.objects(env) if o.category == "Ball")
    paddle = next(o for o in card.objects(env) if o.category == "Player")
    text, situation = card.text(obs, env)
    gap = (ball.y + ball.h / 2) - (paddle.y + paddle.h / 2)
    expected = "level with" if abs(gap) <= card.LEVEL else ("above" if gap < 0 else "below")
    assert situation.startswith(f"the ball is {expected} your paddle")
    assert numbers(text, r"is (\d+) px to the left") == round((paddle.x - ball.x + (paddle.w - ball.w) / 2) / 4) * 4


def test_breakout_fire_launches_and_paddle_moves() -> None:
    card = card_of("Breakout")
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    text, situation = card.text(obs, env)
    assert situation == "no ball is in play" and text.startswith("108 bricks left.")
    x0 = numbers(text, r"x (\d+) of 160")
    obs, _ = play(card, env, obs, lambda s: "move left", 8)
    assert numbers(card.text(obs, env)[0], r"x (\d+) of 160") < x0
    obs, _ = play(card, env, obs, lambda s: "fire", 3)
    assert card.situation(obs, env) != "no ball is in play"


def test_freeway_counts_lanes_as_the_chicken_crosses() -> None:
    card = card_of("Freeway")
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    assert card.text(obs, env)[0].startswith("You have crossed 0 of 10 lanes.")
    lanes = []
    for _ in range(40):
        obs, *_ = env.step(card.actions["go up"])
        text = card.text(obs, env)[0]
        if text.startswith("You are in lane"):
            lanes.append(numbers(text, r"lane (\d+) of 10"))
    assert lanes and max(lanes) >= 3  # cars push back, but going up crosses lanes


def test_boxing_reads_the_opponent_offset() -> None:
    card = card_of("Boxing")
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    me, them = (next(o for o in card.objects(env) if o.category == c) for c in ("Player", "Enemy"))
    text = card.text(obs, env)[0]
    right = (them.x + them.w / 2) - (me.x + me.w / 2)
    assert numbers(text, r"(\d+) px to your right") == round(right / 4) * 4
    obs, _ = play(card, env, obs, lambda s: "move right", 10)
    assert card._offset(env)[0] < right  # moving right closes the gap


def test_space_invaders_cannon_moves_and_aliens_count() -> None:
    card = card_of("SpaceInvaders")
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    assert "36 aliens left" in card.text(obs, env)[0]
    obs, _ = play(card, env, obs, lambda s: "stay", 35)  # the cannon cannot move for the first 32 decisions
    x0 = numbers(card.text(obs, env)[0], r"x (\d+) of 160")
    obs, _ = play(card, env, obs, lambda s: "move right", 10)
    assert numbers(card.text(obs, env)[0], r"x (\d+) of 160") > x0


def test_asterix_moves_between_lanes() -> None:
    card = card_of("Asterix")
    env = card.make_env()
    obs, _ = play(card, env, env.reset(seed=0)[0], lambda s: "stay", 2)  # the reset frame shows lane 1
    lane = numbers(card.text(obs, env)[0], r"lane (\d) of 8")
    assert lane == 4
    obs, _ = play(card, env, obs, lambda s: "move up", 12)
    assert numbers(card.text(obs, env)[0], r"lane (\d) of 8") < lane


@pytest.mark.parametrize("game", GAMES)
def test_random_play_stays_within_situations(game: str) -> None:
    card = card_of(game)
    env = card.make_env()
    rng = np.random.default_rng(0)
    words = card.action_words
    obs, _ = env.reset(seed=0)
    for _ in range(300):
        text, situation = card.text(obs, env)  # raises on a situation the card does not list
        assert len(text) <= 260, text
        obs, _, terminated, truncated, _ = env.step(card.actions[words[rng.integers(len(words))]])
        if terminated or truncated:
            obs, _ = env.reset()


@pytest.mark.parametrize("game", ["Pong", "Breakout", "Freeway", "Asterix"])
def test_situation_table_beats_random(game: str) -> None:
    """1,000 decisions of table play against random play, same seeds; the margins are what seeds 0-2 gave."""
    card = card_of(game)
    words = card.action_words
    table, chance = [], []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        env = card.make_env()
        table.append(play(card, env, env.reset(seed=seed)[0], TABLES[game].__getitem__, 1000)[1])
        chance.append(play(card, env, env.reset(seed=seed)[0], lambda s: words[rng.integers(len(words))], 1000)[1])
    margin = {"Pong": 10, "Breakout": 20, "Freeway": 5, "Asterix": 100}[game]
    assert min(table) >= max(chance) + margin, (table, chance)


def test_freeway_waiting_for_cars_beats_always_going_up() -> None:
    """The "car coming" situations carry knowledge: a table that waits for them beats the zero-shot habit."""
    card = card_of("Freeway")
    env = card.make_env()
    table = [play(card, env, env.reset(seed=seed)[0], TABLES["Freeway"].__getitem__, 1000)[1] for seed in range(2)]
    up = [play(card, env, env.reset(seed=seed)[0], lambda s: "go up", 1000)[1] for seed in range(2)]
    assert min(table) >= max(up) + 2, (table, up)


@pytest.mark.parametrize("game", GAMES)
def test_demonstrations_are_real_states(game: str) -> None:
    card = card_of(game)
    assert len(card.demonstrations) == 3
    for (text, word), (seed, steps) in zip(card.demonstrations, DEMO_STATES[game], strict=True):
        env = card.make_env()
        obs, _ = play(card, env, env.reset(seed=seed)[0], TABLES[game].__getitem__, steps)
        assert card.text(obs, env)[0] == text
        assert word == TABLES[game][card.situation(obs, env)]


@pytest.mark.parametrize("game", GAMES)
def test_variants_are_other_modes_and_difficulties(game: str) -> None:
    card = card_of(game)
    for name, variant in card.variants.items():
        env = card.make_env(name)
        obs, _ = env.reset(seed=0)
        ale = env.unwrapped
        # ALE's environment keeps what it was made with (None: the cartridge's default, 0).
        assert (ale._game_mode, ale._game_difficulty) == (variant.make_kwargs.get("mode"),
                                                          variant.make_kwargs.get("difficulty"))
        card.text(obs, env)  # the RAM reading still holds
    assert game == "Asterix" or len(card.variants) == 2  # Asterix has one mode and one difficulty


def test_wrong_action_set_and_foreign_env_are_usage_errors() -> None:
    card = card_of("Pong")
    with pytest.raises(UsageError, match="expects ALE's actions"):
        card.check(gym.make("ALE/Pong-v5", full_action_space=True))
    with pytest.raises(UsageError, match="needs its own environment"):
        card.objects(gym.make("ALE/Pong-v5"))
    assert isinstance(card.make_env(), ObjectReader)


@pytest.mark.parametrize("observation", [None, "pixels"])
def test_ppo_trains_and_reloads_on_objects_and_pixels(tmp_path, observation: str | None) -> None:
    """Both PPO baselines train on the card's environment, are scored by the shared evaluator, and reload."""
    from llmrl.baselines.ppo import load_hyperparameters, load_ppo_policy, train_ppo
    from llmrl.evaluate import evaluate

    hp = load_hyperparameters("ALE/Pong-v5", observation)
    assert hp["policy"] == ("CnnPolicy" if observation else "MlpPolicy") and hp["atari_wrapper"]
    assert hp["sample_actions"]  # evaluated as the Zoo evaluates Atari agents
    assert "rl-baselines3-zoo" in hp["source"]
    small = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}
    result = train_ppo("ALE/Pong-v5", seed=0, total_steps=128, eval_episodes=2, eval_max_steps=40, out=tmp_path,
                       hyperparameters=small, observation=observation, eval_also_at=64, eval_every=None)
    assert [p["env_steps"] for p in result.curve] == [0, 64, 128]
    policy = load_ppo_policy(tmp_path)
    assert policy.observation == observation and policy.sample and result.policy.sample
    card = card_of("Pong")
    first, trajectories = evaluate(result.policy, card, "ppo", None, 2, seed=7, max_steps=40)
    again, _ = evaluate(policy, card, "ppo", None, 2, seed=7, max_steps=40)
    assert first.returns == again.returns and all(t.length == 40 for t in trajectories)
    assert trajectories[0].steps[0].text.startswith("Your paddle's centre")  # the same game, read aloud


def test_potentials_read_what_wins_points() -> None:
    """Pong and Breakout: an incoming ball far from the paddle is worth less; Freeway: lanes crossed."""
    pong = card_of("Pong")
    env = pong.make_env()
    obs, _ = env.reset(seed=0)
    assert pong.potential(obs, env) == 0.0  # no ball yet
    seen = []
    for _ in range(300):
        obs, *_ = env.step(pong.actions["stay"])
        ball, paddle = (next((o for o in pong.objects(env) if o.category == c), None) for c in ("Ball", "Player"))
        if ball is not None and ball.dx > 0:
            gap = abs(ball.y + ball.h / 2 - paddle.y - paddle.h / 2)
            seen.append((gap, pong.potential(obs, env)))
    assert seen and all(-1 <= p <= 0 for _, p in seen)
    far, near = max(seen), min(seen)
    assert far[0] > near[0] and far[1] < near[1]
    freeway = card_of("Freeway")
    env = freeway.make_env()
    obs, _ = env.reset(seed=0)
    start = freeway.potential(obs, env)
    obs, _ = play(freeway, env, obs, lambda s: "go up", 12)
    assert start == 0.0 and freeway.potential(obs, env) >= 0.2
    breakout = card_of("Breakout")
    env = breakout.make_env()
    obs, _ = env.reset(seed=0)
    served = breakout.potential(obs, env)
    values = [breakout.potential(play(breakout, env, obs, lambda s: "fire", 1)[0], env) for _ in range(60)]
    assert min(values) < 0 and max(values) == 0  # a falling ball off the paddle, and a rising one
    # No ball in play is the floor: firing raises the potential at once, losing the ball cannot raise it.
    assert served == -1.0 and values[0] > served and min(values) >= served


def test_the_emulator_banner_stays_off_stderr():
    """ALE prints its banner once per process unless told otherwise; a user's stderr is for llmrl's errors."""
    done = subprocess.run([sys.executable, "-m", "llmrl", "eval", "--env", "ALE/Pong-v5", "--policy", "random",
                           "--episodes", "1", "--max-steps", "3"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "ALE/Pong-v5" in done.stdout
    assert "A.L.E" not in done.stderr and "Stella" not in done.stderr, done.stderr
