"""Tests of the environment cards in envs/, on real environment states.

Besides the texts themselves, each card's situations are checked for being
informative: a fixed table situation -> action word (llmrl.oracle, written
apart from the cards) must solve the task. The tables are keyed by the cards'
own situation strings, so a card whose situations lose the information fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest

from llmrl.cards import Card, all_cards, get_card
from llmrl.errors import UsageError
from llmrl.oracle import TABLES, mirrored

CLASSIC = ("CartPole-v1", "MountainCar-v0", "Acrobot-v1", "LunarLander-v3")


def card_of(key: str) -> Card:
    return get_card(key)[0]


def run_table(
    key: str, seeds: range, variant: str | None = None, check: Callable[[str], None] | None = None,
    mirror: bool = False,
) -> list[float]:
    """Episode returns of the card's oracle table (``mirror``: its mirrored table); every text goes through
    ``check``."""
    card = card_of(key)
    table = mirrored(TABLES[key](card), card) if mirror else TABLES[key](card)
    env = card.make_env(variant)
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            text, situation = card.text(obs, env)
            assert situation in card.situations, situation
            if check:
                check(text)
            obs, reward, terminated, truncated, _ = env.step(card.actions[table[situation]])
            total += float(reward)
            done = terminated or truncated
        assert card.situation(obs, env) in card.situations  # terminal states too
        returns.append(total)
    env.close()
    return returns


def test_registry_lists_every_card() -> None:
    assert set(TABLES) <= set(all_cards())


@pytest.mark.parametrize("key", sorted(TABLES))
def test_card_is_well_formed(key: str) -> None:
    card = card_of(key)
    assert list(card.actions.values()) == sorted(card.actions.values()), "actions must be in action-id order"
    assert len({w.split()[0] for w in card.actions}) >= len(card.actions) - 1, "first words should differ"
    assert card.default_action is None or card.default_action in card.actions
    assert len(set(card.situations)) == len(card.situations)
    assert all(s == s.lower() and not s.endswith(".") for s in card.situations)
    assert "Answer with" not in card.instructions and card.hint
    assert TABLES[key](card).keys() == set(card.situations)
    assert set(TABLES[key](card).values()) <= set(card.actions)
    card.make_env().close()  # Card.check passes


# reset(seed=0) states, checked by hand against the raw observation (see comments).
KNOWN_TEXTS = {
    # obs [0.0137, -0.0230, -0.0459 rad = -2.6°, -0.0483 rad/s = -2.8°/s]; in 0.25 s the tilt is -3.3°.
    "CartPole-v1": "Cart at center, standing still. Pole 3° left of upright, not turning. "
    "Situation: the pole is falling to the left.",
    # obs [-0.4726, 0.0]
    "MountainCar-v0": "Car at -0.5 m, standing still. Situation: the car is standing still.",
    # angles 1.6° and -2.6°, speeds -0.09 and -0.10 rad/s, tip at -cos(0.027) - cos(-0.019) = -2.0 m.
    "Acrobot-v1": "Links at 0° and 0°, turning 0 and 0 rad/s. Tip height -2 m. "
    "Situation: the lower link swings clockwise.",
    # x 0.006*10 m, y 1.399*6.67 = 9.3 m, vx 0.578*5 = 2.9 m/s, vy -0.528*7.5 = -4.0 m/s,
    # angle -0.4°, spin -0.131*2.5 rad/s = -18.8°/s; projected tilt -0.14 rad; drift 0.58; 0.53 < 1.399/2 + 0.1.
    "LunarLander-v3": "Lander over the pad, 9 m up; moving 3 m/s right, 4 m/s down; tilted 0°, turning right. "
    "Situation: the lander tips right, drifts right and sinks slowly.",
    "FrozenLake-v1-not-slippery": "You are at row 1, column 1; the goal is at row 4, column 4. "
    "Up: edge, down: ice, left: edge, right: ice. Situation: the goal is down and right.",
    # state 314 = taxi (3, 0), passenger at blue (4, 3), destination yellow (4, 0); map row "| | : | : |".
    "Taxi-v4": "Taxi at row 4, column 1. Walls: east, west. Passenger at the blue stop (row 5, column 4), "
    "destination the yellow stop (row 5, column 1). "
    "Situation: the passenger waits to the southeast, walled off to the east in the bottom rows.",
    # view: red ball at (6, 2), nearest other object a yellow key at (2, 5); column 3 free up to the wall at y=0.
    "BabyAI-GoToRedBall-v0": "Mission: go to the red ball. You see a red ball 4 ahead and 3 right, "
    "a yellow key 1 ahead and 1 left. Ahead: 5 free steps, then a wall. "
    "Situation: the red ball is ahead to the right.",
    "BabyAI-GoToLocal-v0": "Mission: go to the green ball. You see a green ball 3 ahead, "
    "a yellow key 1 ahead and 1 left. Ahead: 2 free steps, then a green ball. "
    "Situation: the target is straight ahead.",
}


@pytest.mark.parametrize("key", sorted(KNOWN_TEXTS))
def test_text_of_known_state(key: str) -> None:
    card = card_of(key)
    env = card.make_env()
    obs, _ = env.reset(seed=0)
    text, situation = card.text(obs, env)
    assert text == KNOWN_TEXTS[key]
    assert text.endswith(f" Situation: {situation}.")
    assert card.text(obs, env) == (text, situation)  # no hidden state


def test_frozen_lake_reads_holes_and_goal() -> None:
    card = card_of("FrozenLake-v1")
    env = card.make_env()
    env.reset(seed=0)
    # 4x4 map: row 2 is "FFFH", row 3 "HFFG"; state 8 is row 3, column 1.
    assert card.situation(8, env) == "the goal is down and right, with a hole below"
    assert card.situation(5, env) == "you fell into a hole"
    assert card.situation(15, env) == "you are on the goal"
    assert card.describe(8, env) == (
        "You are at row 3, column 1; the goal is at row 4, column 4. Up: ice, down: hole, left: edge, right: ice."
    )


@pytest.mark.parametrize(
    ("key", "seeds", "passes"),
    [
        ("CartPole-v1", range(10), lambda r: np.mean(r) >= 475),
        ("MountainCar-v0", range(10), lambda r: np.mean(r) > -200 and min(r) > -200),
        ("Acrobot-v1", range(10), lambda r: np.mean(r) > -200),
        ("LunarLander-v3", range(10), lambda r: np.mean(r) > 100),  # random play scores about -180
        ("FrozenLake-v1-not-slippery", range(1), lambda r: r == [1.0]),
        ("Taxi-v4", range(10), lambda r: np.mean(r) > 0),
        ("BabyAI-GoToRedBall-v0", range(20), lambda r: np.mean(np.array(r) > 0) >= 0.6),
        ("BabyAI-GoToLocal-v0", range(20), lambda r: np.mean(np.array(r) > 0) >= 0.5),
    ],
)
def test_situation_table_solves_task(key: str, seeds: range, passes: Callable[[list[float]], bool]) -> None:
    returns = run_table(key, seeds)
    assert passes(returns), returns


def test_frozen_lake_variant_reaches_goal_when_firm() -> None:
    assert run_table("FrozenLake-v1", range(1), variant="not-slippery") == [1.0]


@pytest.mark.parametrize("key", sorted(TABLES))
def test_random_play_stays_within_situations(key: str) -> None:
    """States the tables never reach (crashes, wrong stops, odd views) still get a listed situation."""
    card = card_of(key)
    env = card.make_env()
    rng = np.random.default_rng(0)
    words = card.action_words
    obs, _ = env.reset(seed=0)
    for _ in range(300):
        assert card.situation(obs, env) in card.situations
        obs, _, terminated, truncated, _ = env.step(card.actions[words[rng.integers(len(words))]])
        if terminated or truncated:
            obs, _ = env.reset()


@pytest.mark.parametrize("key", CLASSIC)
def test_classic_control_texts_are_short(key: str) -> None:
    """Texts along table play and random play stay within 160 characters."""

    def short(text: str) -> None:
        assert len(text) <= 160, text

    run_table(key, range(2), check=short)
    card = card_of(key)
    env = card.make_env()
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=1)
    for _ in range(300):
        short(card.text(obs, env)[0])
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            obs, _ = env.reset()


def test_classic_control_texts_repeat() -> None:
    """Coarse rounding: CartPole under table play revisits the same texts most of the time."""
    texts: list[str] = []
    run_table("CartPole-v1", range(2), check=texts.append)
    assert len(set(texts)) < len(texts) / 5


# Where each card's demonstrations come from: (seed, steps of table play), in the card's order.
DEMO_STATES: dict[str, list[tuple[int, int]]] = {
    "CartPole-v1": [(0, 8), (2, 5), (0, 163)],
    "MountainCar-v0": [(0, 0), (3, 85), (4, 57)],
    "Acrobot-v1": [(4, 88), (3, 71)],
    "LunarLander-v3": [(0, 4), (4, 114), (0, 77), (4, 294)],
    "FrozenLake-v1": [(0, 0), (6, 10)],
    "FrozenLake-v1-not-slippery": [(0, 0), (0, 2)],
    "Taxi-v4": [(2, 0), (0, 6), (0, 8)],
    "BabyAI-GoToRedBall-v0": [(2, 4), (4, 0), (1, 0)],
    "BabyAI-GoToLocal-v0": [(0, 0), (5, 38), (3, 46)],
}


@pytest.mark.parametrize("key", sorted(TABLES))
def test_demonstrations_are_real_states(key: str) -> None:
    card = card_of(key)
    table = TABLES[key](card)
    assert 2 <= len(card.demonstrations) <= 4
    for (text, word), (seed, steps) in zip(card.demonstrations, DEMO_STATES[key], strict=True):
        env = card.make_env()
        obs, _ = env.reset(seed=seed)
        for _ in range(steps):
            obs, *_ = env.step(card.actions[table[card.situation(obs, env)]])
        assert card.text(obs, env)[0] == text
        assert word == table[card.situation(obs, env)]


VARIANT_CHANGES: dict[tuple[str, str], Callable[[gym.Env], bool]] = {
    ("CartPole-v1", "heavy-long-pole"): lambda e: e.masspole == 0.5
    and e.polemass_length == e.masspole * e.length
    and e.total_mass == e.masspole + e.masscart,
    ("MountainCar-v0", "weak-engine"): lambda e: e.force == 0.0008,
    ("MountainCar-v0", "strong-engine"): lambda e: e.force == 0.0015,
    ("Acrobot-v1", "heavy-lower-link"): lambda e: e.LINK_MASS_2 == 2.0,
    ("LunarLander-v3", "windy"): lambda e: e.enable_wind,
    ("LunarLander-v3", "low-gravity"): lambda e: e.world.gravity[1] == -5.0,
    ("FrozenLake-v1", "not-slippery"): lambda e: all(len(t) == 1 for t in e.P[0].values()),
    ("FrozenLake-v1", "8x8"): lambda e: e.desc.shape == (8, 8),
    ("FrozenLake-v1-not-slippery", "8x8"): lambda e: e.desc.shape == (8, 8) and len(e.P[0][0]) == 1,
}


def test_every_variant_is_tested() -> None:
    """Physics and mode variants here; mirrored ones below."""
    declared = {(k, v) for k in TABLES for v, spec in card_of(k).variants.items() if not spec.mirrored}
    assert declared == set(VARIANT_CHANGES)


@pytest.mark.parametrize("key", sorted(k for k in TABLES if card_of(k).opposites))
def test_mirrored_controls_swap_each_opposite_pair(key: str) -> None:
    card = card_of(key)
    assert card.variants["mirrored"].mirrored and get_card(f"{key}:mirrored") == (card, "mirrored")
    seeds = range(2) if key.startswith("BabyAI") else range(3)
    # the mirrored table on the mirrored controls sends the environment the very actions the table sends
    # the original: the same episodes
    assert run_table(key, seeds, variant="mirrored", mirror=True) == run_table(key, seeds)
    for a, b in card.opposites.items():
        assert card.opposite(a) == b and card.opposite(b) == a


def test_mirrored_cartpole_defeats_the_original_knowledge() -> None:
    assert np.mean(run_table("CartPole-v1", range(5), variant="mirrored")) < 50
    assert np.mean(run_table("CartPole-v1", range(5))) >= 475


@pytest.mark.parametrize(("key", "variant"), sorted(VARIANT_CHANGES))
def test_variant_changes_what_it_claims(key: str, variant: str) -> None:
    card = card_of(key)
    plain, changed = card.make_env(), card.make_env(variant)
    changed.reset(seed=0)
    plain.reset(seed=0)
    assert VARIANT_CHANGES[key, variant](changed.unwrapped)
    assert not VARIANT_CHANGES[key, variant](plain.unwrapped)
    assert get_card(f"{key}:{variant}") == (card, variant)


def test_unknown_card_or_variant_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no card"):
        get_card("NoSuchEnv-v0")
    with pytest.raises(UsageError, match="no variant"):
        get_card("CartPole-v1:upside-down")
    with pytest.raises(UsageError, match="no variant"):
        card_of("CartPole-v1").make_env("upside-down")


class PendulumWithoutWords(Card):
    """Pendulum's action space is a Box: with no action words the card cannot drive it."""

    env_id = "Pendulum-v1"
    instructions = "Swing the pendulum up."
    situations: ClassVar[tuple[str, ...]] = ("the pendulum hangs",)

    def describe(self, obs: Any, env: gym.Env) -> str:
        return "Pendulum."

    def situation(self, obs: Any, env: gym.Env) -> str:
        return "the pendulum hangs"


def test_box_action_space_without_action_words_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="non-discrete"):
        PendulumWithoutWords().make_env()


def test_potentials_read_progress_toward_the_goal() -> None:
    car, car_env = card_of("MountainCar-v0"), card_of("MountainCar-v0").make_env()
    floor = car.potential(np.array([-np.pi / 6, 0.0]), car_env)
    assert floor == pytest.approx(-car.STEPS) and car.potential(np.array([0.5, 0.0]), car_env) == pytest.approx(0)
    assert car.potential(np.array([-0.5, 0.02]), car_env) > car.potential(np.array([-0.5, 0.0]), car_env)
    arm, arm_env = card_of("Acrobot-v1"), card_of("Acrobot-v1").make_env()
    hanging, level = np.array([1.0, 0, 1, 0, 0, 0]), np.array([0.0, 1, 1, 0, 0, 0])  # upper link level: tip at 0 m
    assert arm.potential(hanging, arm_env) == pytest.approx(-arm.STEPS)
    assert arm.potential(level, arm_env) == pytest.approx(-arm.STEPS / 3)
    lake, lake_env = card_of("FrozenLake-v1"), card_of("FrozenLake-v1").make_env()
    assert [lake.potential(s, lake_env) for s in (0, 5, 15)] == [0.0, pytest.approx(2 / 6), 1.0]
    ball = card_of("BabyAI-GoToRedBall-v0")
    env = ball.make_env()
    env.reset(seed=0)
    level = env.unwrapped
    (tx, ty), = level.instrs.desc.obj_poss
    level.agent_pos = (tx - 1, ty)
    assert ball.potential(None, env) == 1.0
    level.agent_pos = (tx - 3, ty)
    assert ball.potential(None, env) == pytest.approx(1 - 2 / (level.width + level.height - 4))
    assert card_of("CartPole-v1").potential(np.zeros(4), card_of("CartPole-v1").make_env()) is None


def test_babyai_level_redraws_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    # Seed 8 redraws its first level ("Sampling rejected: unreachable object"); the card's env still resets there.
    env = card_of("BabyAI-GoToLocal-v0").make_env()
    obs, _ = env.reset(seed=8)
    assert capsys.readouterr().out == ""
    raw = gym.make("BabyAI-GoToLocal-v0")
    raw_obs, _ = raw.reset(seed=8)
    assert "Sampling rejected" in capsys.readouterr().out
    assert obs["mission"] == raw_obs["mission"] and np.array_equal(obs["image"], raw_obs["image"])
