"""Cards for BabyAI "go to" levels (MiniGrid), read from the egocentric view.

The observation is the agent's 7x7 view (agent at the bottom centre, facing
up) plus the mission string. The card lists the target and the nearest other
object with their offsets in steps (few objects keep the text short and
repetitive), and the situation says where the target is relative to the
agent and whether the way ahead is blocked. Both levels share the action
words and the shape of their situations, so knowledge can move between them.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from llmrl.cards import Card

# MiniGrid's object and colour indices (minigrid.core.constants), fixed by its encoding.
_OBJECTS = {2: "wall", 4: "door", 5: "key", 6: "ball", 7: "box", 8: "goal", 9: "lava"}
_COLORS = {0: "red", 1: "green", 2: "blue", 3: "purple", 4: "yellow", 5: "grey"}
_EMPTY, _WALL, _FLOOR, _DOOR, _GOAL = 1, 2, 3, 4, 8
# The agent's cell in the view, and how many objects the text lists at most.
_AGENT_X, _AGENT_Y = 3, 6
_MAX_LISTED = 2
_MISSION = re.compile(r"go to (?:the|a) (?:(\w+) )?(\w+)")
_PLACES = (
    "right in front of you",
    "straight ahead",
    "ahead to the left",
    "ahead to the right",
    "to your left",
    "to your right",
    "not in view",
)
_BLOCKED = " and the way ahead is blocked"


def _goto_situations(target: str) -> tuple[str, ...]:
    """Every situation: where ``target`` is, and whether the agent can step forward."""
    phrases = [f"{target} is {_PLACES[0]}"]
    for place in _PLACES[1:]:
        phrases += [f"{target} is {place}", f"{target} is {place}{_BLOCKED}"]
    return tuple(phrases)


def _walkable(cell: np.ndarray) -> bool:
    """Whether the agent can step onto this encoded cell (lava counts as blocked)."""
    kind, _, state = (int(v) for v in cell)
    return kind in (_EMPTY, _FLOOR, _GOAL) or (kind == _DOOR and state == 0)


def _offset(x: int, y: int) -> tuple[int, int]:
    """(steps ahead, steps to the right) of view cell (x, y) from the agent."""
    return _AGENT_Y - y, x - _AGENT_X


class _QuietReset(gym.Wrapper):
    """Swallows what BabyAI's level generator prints on reset.

    Its rejection sampling prints "Sampling rejected: ..." each time it redraws
    a level, on stdout, where it cuts into progress bars and piped tables. A
    redraw is routine, not an error, so nothing is lost.
    """

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        with contextlib.redirect_stdout(io.StringIO()):
            return self.env.reset(**kwargs)


class BabyAIGoTo(Card):
    """Shared reading of BabyAI levels whose mission is "go to the/a [colour] type"."""

    requires = ("minigrid",)
    actions: ClassVar[dict[str, Any]] = {"turn left": 0, "turn right": 1, "go forward": 2}
    opposites: ClassVar[dict[str, str]] = {"turn left": "turn right"}
    hint = "Turn until the target is straight ahead, then walk to it; step around anything in the way."
    default_action = "go forward"
    #: How situation phrases name the mission's target.
    target: ClassVar[str] = "the target"

    def build(self, kwargs: dict[str, Any], observation: str | None) -> gym.Env:
        return _QuietReset(super().build(kwargs, observation))

    @staticmethod
    def _objects(obs: dict[str, Any]) -> list[tuple[int, int, str, str]]:
        """Visible objects other than walls as (ahead, right, colour, type), nearest first."""
        image = obs["image"]
        found = []
        for x in range(image.shape[0]):
            for y in range(image.shape[1]):
                kind, color, _ = (int(v) for v in image[x, y])
                if kind in _OBJECTS and kind != _WALL:
                    ahead, right = _offset(x, y)
                    found.append((ahead, right, _COLORS[color], _OBJECTS[kind]))
        return sorted(found, key=lambda o: (abs(o[0]) + abs(o[1]), o[0], o[1]))

    @staticmethod
    def _wanted(obs: dict[str, Any]) -> tuple[str | None, str]:
        """(colour or None, type) of the mission's target."""
        match = _MISSION.search(obs["mission"])
        if match is None:
            raise ValueError(f"not a 'go to' mission: {obs['mission']!r}")
        return match.group(1), match.group(2)

    def _targets(self, obs: dict[str, Any]) -> list[tuple[int, int, str, str]]:
        """Visible objects the mission names, nearest first."""
        color, kind = self._wanted(obs)
        return [o for o in self._objects(obs) if o[3] == kind and (color is None or o[2] == color)]

    def describe(self, obs: dict[str, Any], env: gym.Env) -> str:
        targets = self._targets(obs)
        # Targets first, so the one that matters is never cut from the list.
        listed = targets + [o for o in self._objects(obs) if o not in targets]
        seen = []
        for ahead, right, color, kind in listed[:_MAX_LISTED]:
            where = [f"{ahead} ahead"] if ahead else []
            if right:
                where.append(f"{abs(right)} {'right' if right > 0 else 'left'}")
            seen.append(f"a {color} {kind} {' and '.join(where)}")
        image = obs["image"]
        free = 0
        while free < _AGENT_Y and _walkable(image[_AGENT_X, _AGENT_Y - 1 - free]):
            free += 1
        if free == _AGENT_Y:
            thing = "the edge of view"
        else:
            kind, color, _ = (int(v) for v in image[_AGENT_X, _AGENT_Y - 1 - free])
            thing = "a wall" if kind == _WALL else f"a {_COLORS[color]} {_OBJECTS.get(kind, 'thing')}"
        if free:
            front = f"Ahead: {free} free step{'' if free == 1 else 's'}, then {thing}."
        else:
            front = f"Right in front: {thing}."
        return f"Mission: {obs['mission']}. You see {', '.join(seen) or 'no objects'}. {front}"

    def situation(self, obs: dict[str, Any], env: gym.Env) -> str:
        targets = self._targets(obs)
        blocked = "" if _walkable(obs["image"][_AGENT_X, _AGENT_Y - 1]) else _BLOCKED
        if not targets:
            return f"{self.target} is not in view{blocked}"
        ahead, right = targets[0][:2]
        if (ahead, right) == (1, 0):
            return f"{self.target} is right in front of you"
        if right == 0:
            place = "straight ahead"
        elif ahead == 0:
            place = f"to your {'right' if right > 0 else 'left'}"
        else:
            place = f"ahead to the {'right' if right > 0 else 'left'}"
        return f"{self.target} is {place}{blocked}"

    def potential(self, obs: dict[str, Any], env: gym.Env) -> float:
        """Success reward 1 scaled down by the share of the room still between you and the nearest
        target (full-state distance: the target may be out of view)."""
        level = env.unwrapped
        x, y = level.agent_pos
        steps = min(abs(int(tx) - int(x)) + abs(int(ty) - int(y)) for tx, ty in level.instrs.desc.obj_poss) - 1
        return 1.0 - max(steps, 0) / (level.width + level.height - 4)


class GoToRedBall(BabyAIGoTo):
    env_id = "BabyAI-GoToRedBall-v0"
    instructions = (
        "You walk in a room with several objects and must go to the red ball: stand next to it and face it. "
        "You only see a few steps ahead and to the sides; the episode ends when you face the red ball."
    )
    target = "the red ball"
    situations = _goto_situations(target)
    demonstrations = (
        (
            "Mission: go to a red ball. You see a red ball 3 ahead and 2 left, a purple box 2 left. "
            "Ahead: 1 free step, then a red box. Situation: the red ball is ahead to the left.",
            "go forward",
        ),
        (
            "Mission: go to the red ball. You see a red ball 3 left, a yellow key 2 right. "
            "Ahead: 1 free step, then a grey ball. Situation: the red ball is to your left.",
            "turn left",
        ),
        (
            "Mission: go to the red ball. You see a grey box 2 left, a purple box 1 ahead and 1 left. "
            "Ahead: 3 free steps, then a wall. Situation: the red ball is not in view.",
            "go forward",
        ),
    )


class GoToLocal(BabyAIGoTo):
    env_id = "BabyAI-GoToLocal-v0"
    instructions = (
        "You walk in a room with several objects and must go to the one the mission names: stand next to it "
        "and face it. You only see a few steps ahead and to the sides; the episode ends when you face it."
    )
    situations = _goto_situations(BabyAIGoTo.target)
    demonstrations = (
        (
            "Mission: go to the green ball. You see a green ball 3 ahead, a yellow key 1 ahead and 1 left. "
            "Ahead: 2 free steps, then a green ball. Situation: the target is straight ahead.",
            "go forward",
        ),
        (
            "Mission: go to a grey key. You see a grey key 2 right, a red ball 1 right. "
            "Ahead: 1 free step, then a wall. Situation: the target is to your right.",
            "turn right",
        ),
        (
            "Mission: go to the red key. You see a red key 2 ahead and 2 left, a green box 1 left. "
            "Right in front: a red box. Situation: the target is ahead to the left and the way ahead is blocked.",
            "turn left",
        ),
    )


CARDS: list[Card] = [GoToRedBall(), GoToLocal()]
