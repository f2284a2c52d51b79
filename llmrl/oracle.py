"""Reference table policies for the built-in cards: one action word per situation.

Written apart from the cards, from the tasks' rules, so that they test the
cards: a card whose situation phrases lose what the task needs cannot be
solved by its table (tests/test_cards.py plays every table). They also give
benchmarks and reports a reference that acts only on the situations.
"""

from __future__ import annotations

from typing import Callable

from llmrl.cards import Card, situation_of
from llmrl.policy import Policy, PolicyStats

Table = dict[str, str]


CARTPOLE_TABLE: Table = {
    "the pole is falling to the left": "left",
    "the pole is falling to the right": "right",
    "the pole is balanced and the cart drifts left": "left",
    "the pole is balanced and the cart drifts right": "right",
}
MOUNTAINCAR_TABLE: Table = {
    "the car is rolling left": "push left",
    "the car is rolling right": "push right",
    "the car is standing still": "push left",
}
ACROBOT_TABLE: Table = {
    "the lower link swings clockwise": "clockwise",
    "the lower link swings counterclockwise": "counterclockwise",
}


def lunar_table(card: Card) -> Table:
    """Undo a lean that goes with the drift, brake when falling fast, lean against a drift, else coast."""
    table = {"the lander is touching down": "wait"}
    for s in card.situations[1:]:
        lean = "left" if "tips left" in s else "right" if "tips right" in s else None
        wanted = "left" if "drifts right" in s else "right" if "drifts left" in s else None
        if lean not in (None, wanted):
            table[s] = "right engine" if lean == "left" else "left engine"  # turn back
        elif "falls fast" in s:
            table[s] = "main engine"
        elif lean is None and wanted is not None:
            table[s] = f"{wanted} engine"  # start leaning against the drift
        else:
            table[s] = "wait"
    return table


def lake_table(card: Card) -> Table:
    """Step toward the goal, vertically first, but not into a hole."""
    sides = {"up": "above", "down": "below", "left": "to the left", "right": "to the right"}
    table = {"you are on the goal": "down", "you fell into a hole": "down"}
    for s in card.situations[2:]:
        toward = s.split(",")[0].removeprefix("the goal is ").split(" and ")
        safe = [m for m in toward if "hole" not in s or sides[m] not in s.split(",")[1]]
        table[s] = safe[0] if safe else "left"
    return table


def taxi_table(card: Card) -> Table:
    """Drive horizontally first; round a wall through the open middle row."""
    table = {}
    for s in card.situations:
        if "delivered" in s or "at the destination" in s:
            table[s] = "drop off"
        elif "waiting passenger" in s:
            table[s] = "pick up"
        elif "walled off" in s:
            table[s] = "south" if "top rows" in s else "north"
        else:
            direction = s.split(" the ")[-1]
            table[s] = next((d for d in ("east", "west") if d in direction), direction)
    return table


def goto_table(card: Card) -> Table:
    """Walk to the target when it is ahead, turn to it when beside; explore when unseen."""
    table = {}
    for s in card.situations:
        blocked = s.endswith("blocked")
        if "to your left" in s or ("ahead to the left" in s and blocked):
            table[s] = "turn left"
        elif "to your right" in s or ("ahead to the right" in s and blocked):
            table[s] = "turn right"
        elif blocked:
            table[s] = "turn left"
        else:
            table[s] = "go forward"
    return table


def mirrored(table: Table, card: Card) -> Table:
    """The table for the card's ``mirrored`` variant: each action word replaced by its opposite."""
    return {situation: card.opposite(word) for situation, word in table.items()}


TABLES: dict[str, Callable[[Card], Table]] = {
    "CartPole-v1": lambda card: CARTPOLE_TABLE,
    "MountainCar-v0": lambda card: MOUNTAINCAR_TABLE,
    "Acrobot-v1": lambda card: ACROBOT_TABLE,
    "LunarLander-v3": lunar_table,
    "FrozenLake-v1": lake_table,
    "FrozenLake-v1-not-slippery": lake_table,
    "Taxi-v4": taxi_table,
    "BabyAI-GoToRedBall-v0": goto_table,
    "BabyAI-GoToLocal-v0": goto_table,
}


class TablePolicy(Policy):
    """Plays a table: the situation phrase that ends each text (``... Situation: S.``) picks the action."""

    def __init__(self, card: Card, table: Table):
        self.action_words, self.table, self.stats = card.action_words, table, PolicyStats()

    def act(self, texts: list[str], slots: list[int] | None = None) -> list[int]:
        self.stats.decisions += len(texts)
        return [self.action_words.index(self.table[situation_of(t)]) for t in texts]


def table_policy(card: Card, variant: str | None = None) -> TablePolicy | None:
    """The card's reference table as a policy, mirrored on a mirrored variant; None for a card without one."""
    if card.key not in TABLES:
        return None
    table = TABLES[card.key](card)
    return TablePolicy(card, mirrored(table, card) if variant and card.variants[variant].mirrored else table)
