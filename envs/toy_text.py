"""Cards for Gymnasium's grid-world toy text tasks: FrozenLake and Taxi.

Their observations are single integers, so the card reads the static map
(``env.unwrapped.desc``) to say what lies around the agent. Situations name
the direction of the current target and whatever blocks the straight way
there: enough for a fixed situation -> action table to reach it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym

from llmrl.cards import Card, Variant

# (row step, column step) of each FrozenLake move, in the order the text lists the neighbours.
_LAKE_MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
_LAKE_SIDE = {"up": "above", "down": "below", "left": "to the left", "right": "to the right"}
_LAKE_CELLS = {b"S": "ice", b"F": "ice", b"H": "hole", b"G": "goal"}


def _lake_situations() -> tuple[str, ...]:
    """Every FrozenLake situation: goal direction, plus holes on the moves toward it."""
    phrases = ["you are on the goal", "you fell into a hole"]
    for vertical in ("", "up", "down"):
        for horizontal in ("", "left", "right"):
            toward = [m for m in (vertical, horizontal) if m]
            if not toward:
                continue
            base = f"the goal is {' and '.join(toward)}"
            phrases.append(base)
            phrases += [f"{base}, with a hole {_LAKE_SIDE[m]}" for m in toward]
            if len(toward) == 2:
                phrases.append(f"{base}, with holes {_LAKE_SIDE[vertical]} and {_LAKE_SIDE[horizontal]}")
    return tuple(phrases)


class FrozenLake(Card):
    env_id = "FrozenLake-v1"
    instructions = (
        "You cross a frozen lake from the start to the goal without stepping into a hole. "
        "The ice is slippery, so a step may slide you sideways; the episode ends at the goal or in a hole."
    )
    actions: ClassVar[dict[str, Any]] = {"left": 0, "down": 1, "right": 2, "up": 3}
    opposites: ClassVar[dict[str, str]] = {"left": "right", "up": "down"}
    hint = "Head for the goal and go around holes; on slippery ice, keep away from cells next to a hole."
    situations = _lake_situations()
    demonstrations = (
        (
            "You are at row 1, column 1; the goal is at row 4, column 4. "
            "Up: edge, down: ice, left: edge, right: ice. Situation: the goal is down and right.",
            "down",
        ),
        (
            "You are at row 3, column 1; the goal is at row 4, column 4. "
            "Up: ice, down: hole, left: edge, right: ice. "
            "Situation: the goal is down and right, with a hole below.",
            "right",
        ),
    )
    variants: ClassVar[dict[str, Variant]] = {
        "not-slippery": Variant("ice is not slippery: every step goes where intended", {"is_slippery": False}),
        "8x8": Variant("the larger 8x8 lake", {"map_name": "8x8"}),
    }

    @staticmethod
    def _where(obs: Any, env: gym.Env) -> tuple[int, int, tuple[int, int]]:
        """(row, column, goal cell) of the agent, from the static map."""
        desc = env.unwrapped.desc
        row, col = divmod(int(obs), desc.shape[1])
        goal_row, goal_col = (int(i[0]) for i in (desc == b"G").nonzero())
        return row, col, (goal_row, goal_col)

    @staticmethod
    def _cell(env: gym.Env, row: int, col: int) -> str:
        """What lies at (row, col): ice, hole, goal, or the edge beyond the map."""
        desc = env.unwrapped.desc
        if 0 <= row < desc.shape[0] and 0 <= col < desc.shape[1]:
            return _LAKE_CELLS[bytes(desc[row, col])]
        return "edge"

    def describe(self, obs: Any, env: gym.Env) -> str:
        row, col, (goal_row, goal_col) = self._where(obs, env)
        around = ", ".join(f"{m}: {self._cell(env, row + dr, col + dc)}" for m, (dr, dc) in _LAKE_MOVES.items())
        return (
            f"You are at row {row + 1}, column {col + 1}; the goal is at row {goal_row + 1}, column {goal_col + 1}. "
            f"{around.capitalize()}."
        )

    def situation(self, obs: Any, env: gym.Env) -> str:
        row, col, (goal_row, goal_col) = self._where(obs, env)
        here = self._cell(env, row, col)
        if here == "goal":
            return "you are on the goal"
        if here == "hole":
            return "you fell into a hole"
        vertical = "down" if goal_row > row else "up" if goal_row < row else ""
        horizontal = "right" if goal_col > col else "left" if goal_col < col else ""
        toward = [m for m in (vertical, horizontal) if m]
        holes = [m for m in toward if self._cell(env, row + _LAKE_MOVES[m][0], col + _LAKE_MOVES[m][1]) == "hole"]
        base = f"the goal is {' and '.join(toward)}"
        if not holes:
            return base
        if len(holes) == 1:
            return f"{base}, with a hole {_LAKE_SIDE[holes[0]]}"
        return f"{base}, with holes {_LAKE_SIDE[holes[0]]} and {_LAKE_SIDE[holes[1]]}"

    def potential(self, obs: Any, env: gym.Env) -> float:
        """The goal's reward 1 scaled down by the share of the map still between you and the goal."""
        row, col, (goal_row, goal_col) = self._where(obs, env)
        rows, cols = env.unwrapped.desc.shape
        return 1.0 - (abs(goal_row - row) + abs(goal_col - col)) / (rows + cols - 2)


class FrozenLakeNotSlippery(FrozenLake):
    """FrozenLake on firm ice, a deterministic task of its own for quick experiments."""

    name = "FrozenLake-v1-not-slippery"
    instructions = (
        "You cross a frozen lake from the start to the goal without stepping into a hole. "
        "Every step goes where you intend; the episode ends at the goal or in a hole."
    )
    make_kwargs: ClassVar[dict[str, Any]] = {"is_slippery": False}
    variants: ClassVar[dict[str, Variant]] = {"8x8": Variant("the larger 8x8 lake", {"map_name": "8x8"})}


# Taxi: the four stops in the order of the environment's passenger and destination indices.
_STOPS = ("red", "green", "yellow", "blue")
_COMPASS = ("north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest")


def _taxi_situations() -> tuple[str, ...]:
    """Every Taxi situation: the target's compass direction, and a wall on the way there."""
    phrases = [
        "the passenger has been delivered",
        "the taxi is at the waiting passenger",
        "the taxi is at the destination with the passenger",
    ]
    for base in ("the passenger waits to the", "the destination is to the"):
        for direction in _COMPASS:
            phrases.append(f"{base} {direction}")
            phrases += [
                f"{base} {direction}, walled off to the {side} in the {half} rows"
                for side in ("east", "west")
                if side in direction
                for half in ("top", "bottom")
            ]
    return tuple(phrases)


class Taxi(Card):
    # Gymnasium 1.4 retired Taxi-v3; v4 has the same default dynamics.
    env_id = "Taxi-v4"
    instructions = (
        "You drive a taxi on a 5x5 grid with walls: pick up the passenger at their stop and drop them off "
        "at their destination stop. The episode ends when the passenger is dropped off at the destination."
    )
    actions: ClassVar[dict[str, Any]] = {
        "south": 0,
        "north": 1,
        "east": 2,
        "west": 3,
        "pick up": 4,
        "drop off": 5,
    }
    hint = (
        "Drive to the passenger and pick them up, then drive to the destination and drop them off; "
        "the middle row has no walls, so go around walls through it."
    )
    situations = _taxi_situations()
    demonstrations = (
        (
            "Taxi at row 2, column 2. Walls: east. Passenger at the yellow stop (row 5, column 1), "
            "destination the red stop (row 1, column 1). Situation: the passenger waits to the southwest.",
            "west",
        ),
        (
            "Taxi at row 5, column 4. Walls: south, west. "
            "Passenger at the blue stop (row 5, column 4), destination the yellow stop (row 5, column 1). "
            "Situation: the taxi is at the waiting passenger.",
            "pick up",
        ),
        (
            "Taxi at row 4, column 4. Walls: west. Passenger aboard, destination the yellow stop (row 5, "
            "column 1). Situation: the destination is to the southwest, "
            "walled off to the west in the bottom rows.",
            "north",
        ),
    )

    @staticmethod
    def _state(obs: Any, env: gym.Env) -> tuple[int, int, int, int]:
        """(taxi row, taxi column, passenger stop or 4 when aboard, destination stop)."""
        row, col, passenger, destination = env.unwrapped.decode(int(obs))
        return int(row), int(col), int(passenger), int(destination)

    @staticmethod
    def _walls(env: gym.Env, row: int, col: int) -> list[str]:
        """Sides the taxi cannot drive through: grid edges and the map's '|' walls."""
        desc, nrow = env.unwrapped.desc, len(env.unwrapped.desc) - 2
        walls = []
        if row == 0:
            walls.append("north")
        if row == nrow - 1:
            walls.append("south")
        if desc[row + 1, 2 * col + 2] == b"|":
            walls.append("east")
        if desc[row + 1, 2 * col] == b"|":
            walls.append("west")
        return walls

    def describe(self, obs: Any, env: gym.Env) -> str:
        row, col, passenger, destination = self._state(obs, env)
        locs = env.unwrapped.locs

        def stop(i: int) -> str:
            return f"the {_STOPS[i]} stop (row {locs[i][0] + 1}, column {locs[i][1] + 1})"

        rider = "aboard" if passenger == len(locs) else f"at {stop(passenger)}"
        walls = self._walls(env, row, col)
        blocked = f" Walls: {', '.join(walls)}." if walls else ""
        return f"Taxi at row {row + 1}, column {col + 1}.{blocked} Passenger {rider}, destination {stop(destination)}."

    def situation(self, obs: Any, env: gym.Env) -> str:
        row, col, passenger, destination = self._state(obs, env)
        locs = env.unwrapped.locs
        if passenger == destination:
            return "the passenger has been delivered"
        aboard = passenger == len(locs)
        target = locs[destination] if aboard else locs[passenger]
        if (row, col) == tuple(target):
            if aboard:
                return "the taxi is at the destination with the passenger"
            return "the taxi is at the waiting passenger"
        base = "the destination is to the" if aboard else "the passenger waits to the"
        vertical = "south" if target[0] > row else "north" if target[0] < row else ""
        horizontal = "east" if target[1] > col else "west" if target[1] < col else ""
        text = f"{base} {vertical}{horizontal}"
        if horizontal and horizontal in self._walls(env, row, col):
            # Walls only split the top and bottom rows; which half says which way leads round them.
            half = "top" if row < (len(env.unwrapped.desc) - 2) // 2 else "bottom"
            text += f", walled off to the {horizontal} in the {half} rows"
        return text


CARDS: list[Card] = [FrozenLake(), FrozenLakeNotSlippery(), Taxi()]
