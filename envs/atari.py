"""Cards for Atari 2600 games (ALE v5), read from RAM as objects with OCAtari.

A text policy cannot read pixels cheaply, so each card reads the game's
objects from the console's RAM with OCAtari's per-game RAM maps (Delfosse et
al., "OCAtari: Object-Centric Atari 2600 Reinforcement Learning
Environments", RLC 2024) and says where the ones that matter are relative to
you and how they move since the last decision. Positions are in screen pixels
(160 x 210, y grows downward), rounded to a few pixels so that texts repeat
and the policy's decision cache answers them.

Protocol: ALE v5's defaults (Machado et al., JAIR 2018: frame skip 4, sticky
actions with probability 0.25, the game's minimal action set); the cap on
steps per episode is the experiment's ``eval_max_steps``. Variants are other
game modes and difficulties of the same cartridge (Machado et al.'s
"flavours").

Observations besides the texts: by default the environment's observation is
OCAtari's object vector of the last four decisions (what PPO on objects reads);
``observation="pixels"`` gives the 84x84 grey frames of the last four decisions
(what PPO on pixels reads, as in Mnih et al., Nature 2015). Both read the same
ALE v5 environment, so every learner plays the same game.

OCAtari's own environment class is not used: version 2.2.1 returns
``truncated`` and ``terminated`` swapped from ``step``, and it is no
``gym.Wrapper``, so Gymnasium and SB3 wrappers cannot reach the ALE through it.
:class:`ObjectReader` is a plain wrapper around ALE's environment that calls
OCAtari's RAM maps.
"""

from __future__ import annotations

import importlib
from collections import deque
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from llmrl.cards import Card, Variant
from llmrl.errors import MissingExtra, UsageError

#: Decisions an observation (object vector or frames) spans.
STACK = 4
#: Pixels positions are rounded to in texts.
GRID = 4


def _px(value: float) -> int:
    """A pixel distance rounded to the texts' grid."""
    return int(round(value / GRID) * GRID)


class ObjectReader(gym.Wrapper):
    """Reads the game's objects from RAM after every reset and step, with OCAtari's RAM maps.

    :attr:`objects` lists the objects on screen now: OCAtari game objects with
    ``category``, ``x``, ``y``, ``w``, ``h`` and ``dx``, ``dy`` (pixels moved
    since the previous decision). With ``vector``, the observation becomes
    OCAtari's object vector of the last :data:`STACK` decisions.
    """

    def __init__(self, env: gym.Env, game: str, vector: bool = True):
        super().__init__(env)
        from ocatari.ram import extract_ram_info

        importlib.import_module(f"ocatari.ram.{game}")  # OCAtari looks the game's module up in sys.modules
        self._ram = extract_ram_info
        self.game, self.vector = game, vector
        self._slots: list = []
        self._stack: deque = deque(maxlen=STACK)
        if vector:
            size = extract_ram_info.get_object_state_size(game, False)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (STACK, size), np.float32)

    @property
    def objects(self) -> list:
        return [o for o in self._slots if o]

    def _read(self) -> None:
        self._ram.detect_objects_ram(self._slots, self.env.unwrapped.ale.getRAM(), self.game, False)
        if self.vector:
            self._stack.append(np.array([v for o in self._slots for v in o._nsrepr], dtype=np.float32))

    def _observation(self, obs: Any) -> Any:
        return np.stack(self._stack) if self.vector else obs

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self._slots = self._ram.init_objects(self.game, False)
        self._stack.clear()
        self._read()
        while self.vector and len(self._stack) < STACK:
            self._stack.append(self._stack[-1])
        return self._observation(obs), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._read()
        return self._observation(obs), reward, terminated, truncated, info


def _first(objects: list, category: str) -> Any:
    return next((o for o in objects if o.category == category), None)


def _centre(o: Any) -> tuple[float, float]:
    return o.x + o.w / 2, o.y + o.h / 2


class AtariCard(Card):
    """Shared set-up of the Atari cards: ALE v5, OCAtari objects, action words checked against ALE's meanings.

    Subclasses name the ``game`` (the ALE id's stem), list ALE's minimal action
    set in ``minimal_actions`` (its order gives the action numbers, checked
    against the environment) and map their action words to those meanings in
    ``words``.
    """

    requires = ("ale_py",)
    family = "atari"
    observations = ("pixels",)
    #: ALE's name of the game (``ALE/<game>-v5``).
    game: ClassVar[str]
    #: The game's minimal action set as ALE names it, in ALE's order.
    minimal_actions: ClassVar[tuple[str, ...]]
    #: Action word -> ALE action meaning.
    words: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "game" in cls.__dict__:
            cls.env_id = f"ALE/{cls.game}-v5"
            cls.actions = {word: cls.minimal_actions.index(meaning) for word, meaning in cls.words.items()}

    @property
    def _module(self) -> str:
        """OCAtari's module name for the game."""
        return self.game.lower()

    def build(self, kwargs: dict[str, Any], observation: str | None) -> gym.Env:
        try:
            importlib.import_module("ocatari.ram")
        except ImportError as exc:
            raise MissingExtra(f"card {self.key} reads objects with OCAtari: pip install -e '.[atari]' ({exc})") from exc
        import ale_py

        # ALE prints its banner to stderr on every new emulator unless its logger is told to keep to errors.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        if observation == "pixels":
            env = ObjectReader(gym.make(self.env_id, obs_type="grayscale", **kwargs), self._module, vector=False)
            env = gym.wrappers.ResizeObservation(env, (84, 84))
            return gym.wrappers.FrameStackObservation(env, STACK)
        return ObjectReader(gym.make(self.env_id, obs_type="ram", **kwargs), self._module)

    def check(self, env: gym.Env) -> None:
        meanings = tuple(env.unwrapped.get_action_meanings())
        if meanings != self.minimal_actions:
            raise UsageError(f"card {self.key} expects ALE's actions {self.minimal_actions}, the game has {meanings}")
        super().check(env)

    @staticmethod
    def objects(env: gym.Env) -> list:
        """The objects the environment's :class:`ObjectReader` read at the last reset or step."""
        reader = env
        while not isinstance(reader, ObjectReader):
            if not isinstance(reader, gym.Wrapper):
                raise UsageError("an Atari card's text needs its own environment (card.make_env)")
            reader = reader.env
        return reader.objects


def _ball_and_paddle(env: gym.Env) -> tuple[Any, Any]:
    """(ball, your paddle) of Pong or Breakout; None for one not on screen."""
    objects = AtariCard.objects(env)
    return _first(objects, "Ball"), _first(objects, "Player")


def _motion(o: Any, toward: str, away: str) -> str:
    """'moving toward you and up' style motion of ``o`` along x (``toward``/``away`` read dx > 0 / < 0) and y."""
    parts = []
    if o.dx:
        parts.append(toward if o.dx > 0 else away)
    if o.dy:
        parts.append("down" if o.dy > 0 else "up")
    return "moving " + " and ".join(parts) if parts else "still"


class Pong(AtariCard):
    game = "Pong"
    instructions = (
        "You play Pong: you move the paddle on the right side up and down to hit the ball back past "
        "the opponent's paddle on the left. You win a point when the opponent misses, lose one when you miss; "
        "the game ends when one side has 21 points."
    )
    minimal_actions = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
    # In Pong, RIGHT moves the paddle up and LEFT moves it down.
    words: ClassVar[dict[str, str]] = {"stay": "NOOP", "move up": "RIGHT", "move down": "LEFT"}
    default_action = "stay"
    hint = "Keep your paddle level with the ball: move up when the ball is above it, down when it is below."
    demonstrations = (
        (
            "Your paddle's centre is at height 140 of 210. "
            "The ball is 76 px to the left of it and 8 px above its centre, moving away and down. "
            "Situation: the ball is above your paddle and moving away.",
            "move up",
        ),
        (
            "Your paddle's centre is at height 108 of 210. "
            "The ball is 68 px to the left of it and 12 px below its centre, moving away and down. "
            "Situation: the ball is below your paddle and moving away.",
            "move down",
        ),
        (
            "Your paddle's centre is at height 120 of 210. "
            "The ball is 96 px to the left of it and 4 px below its centre, moving toward you and up. "
            "Situation: the ball is level with your paddle and moving toward you.",
            "stay",
        ),
    )
    situations = tuple(
        f"the ball is {where} your paddle and moving {way}"
        for where in ("above", "level with", "below") for way in ("toward you", "away")
    ) + ("no ball is in play",)
    variants: ClassVar[dict[str, Variant]] = {
        "difficulty-1": Variant("the cartridge's difficulty 1 instead of 0", {"difficulty": 1}),
        "mode-1": Variant("the cartridge's game mode 1 instead of 0", {"mode": 1}),
    }
    #: Ball centre within this many pixels of the paddle's centre counts as level with it.
    LEVEL = 6

    def describe(self, obs: Any, env: gym.Env) -> str:
        ball, paddle = _ball_and_paddle(env)
        if paddle is None:
            return "Your paddle is off screen."
        px, py = _centre(paddle)
        text = f"Your paddle's centre is at height {_px(py)} of 210."
        if ball is None:
            return text + " No ball in play."
        bx, by = _centre(ball)
        vertical = f"{_px(abs(by - py))} px {'above' if by < py else 'below'}" if _px(by - py) else "level with"
        return (f"{text} The ball is {_px(px - bx)} px to the left of it and {vertical} its centre, "
                f"{_motion(ball, 'toward you', 'away')}.")

    def potential(self, obs: Any, env: gym.Env) -> float:
        """Minus the share of half the court between the paddle and an incoming ball: a point is lost
        when the gap stays open. 0 while the ball moves away or is out of play."""
        ball, paddle = _ball_and_paddle(env)
        if ball is None or paddle is None or ball.dx < 0:
            return 0.0
        return -min(abs(_centre(ball)[1] - _centre(paddle)[1]) / 105, 1.0)

    def situation(self, obs: Any, env: gym.Env) -> str:
        ball, paddle = _ball_and_paddle(env)
        if ball is None or paddle is None:
            return "no ball is in play"
        gap = _centre(ball)[1] - _centre(paddle)[1]
        where = "level with" if abs(gap) <= self.LEVEL else ("above" if gap < 0 else "below")
        return f"the ball is {where} your paddle and moving {'toward you' if ball.dx >= 0 else 'away'}"


class Breakout(AtariCard):
    game = "Breakout"
    instructions = (
        "You play Breakout: you move a paddle left and right along the bottom to bounce a ball into a wall of "
        "bricks above; each brick hit scores. You lose a life when the ball falls past the paddle, and fire to "
        "launch a new ball. The game ends when the five lives are gone."
    )
    minimal_actions = ("NOOP", "FIRE", "RIGHT", "LEFT")
    words: ClassVar[dict[str, str]] = {"fire": "FIRE", "stay": "NOOP", "move left": "LEFT", "move right": "RIGHT"}
    default_action = "fire"
    hint = "Keep the paddle under the ball: move toward the side the ball is on; fire when no ball is in play."
    demonstrations = (
        (
            "108 bricks left. Your paddle's centre is at x 32 of 160. "
            "The ball is 16 px right of the paddle's centre and 32 px above it, moving left and down. "
            "Situation: the ball is right of your paddle and falling.",
            "move right",
        ),
        (
            "108 bricks left. Your paddle's centre is at x 56 of 160. "
            "The ball is 12 px left of the paddle's centre and 32 px above it, moving right and up. "
            "Situation: the ball is left of your paddle and rising.",
            "move left",
        ),
        (
            "108 bricks left. Your paddle's centre is at x 72 of 160. "
            "The ball is 4 px left of the paddle's centre and 56 px above it, moving left and down. "
            "Situation: the ball is over your paddle and falling.",
            "stay",
        ),
    )
    situations = tuple(
        f"the ball is {where} and {way}"
        for where in ("left of your paddle", "over your paddle", "right of your paddle")
        for way in ("falling", "rising")
    ) + ("no ball is in play",)
    variants: ClassVar[dict[str, Variant]] = {
        "difficulty-1": Variant("the cartridge's difficulty 1 instead of 0", {"difficulty": 1}),
        "mode-4": Variant("the cartridge's game mode 4 instead of 0", {"mode": 4}),
    }
    #: Ball centre within this many pixels of the paddle's centre counts as over it.
    OVER = 6

    def describe(self, obs: Any, env: gym.Env) -> str:
        ball, paddle = _ball_and_paddle(env)
        # OCAtari merges neighbouring bricks of a row into one block; a brick is 8 px wide.
        bricks = sum(o.w // 8 for o in self.objects(env) if o.category == "Block")
        if paddle is None:
            return f"{bricks} bricks left. Your paddle is off screen."
        px, py = _centre(paddle)
        text = f"{bricks} bricks left. Your paddle's centre is at x {_px(px)} of 160."
        if ball is None:
            return text + " No ball in play."
        bx, by = _centre(ball)
        side = f"{_px(abs(bx - px))} px {'left' if bx < px else 'right'} of" if _px(bx - px) else "right over"
        return (f"{text} The ball is {side} the paddle's centre and {_px(py - by)} px above it, "
                f"{_motion(ball, 'right', 'left')}.")

    def potential(self, obs: Any, env: gym.Env) -> float:
        """Minus the share of half the screen between the paddle and a falling ball (a falling ball the
        paddle misses costs a life and the bricks it would have hit), 0 while it rises, and -1, the floor,
        with no ball in play: a lost ball then never looks like a gain, and launching one never like a loss
        (Breakout scores nothing for a lost life, so only the potential can say it)."""
        ball, paddle = _ball_and_paddle(env)
        if ball is None or paddle is None:
            return -1.0
        if ball.dy <= 0:
            return 0.0
        return -min(abs(_centre(ball)[0] - _centre(paddle)[0]) / 80, 1.0)

    def situation(self, obs: Any, env: gym.Env) -> str:
        ball, paddle = _ball_and_paddle(env)
        if ball is None or paddle is None:
            return "no ball is in play"
        gap = _centre(ball)[0] - _centre(paddle)[0]
        where = "over your paddle" if abs(gap) <= self.OVER else (
            "left of your paddle" if gap < 0 else "right of your paddle")
        return f"the ball is {where} and {'rising' if ball.dy < 0 else 'falling'}"


class Freeway(AtariCard):
    game = "Freeway"
    instructions = (
        "You play Freeway: you lead a chicken up across a ten-lane highway; each crossing scores a point and "
        "the chicken starts again at the bottom. A car that hits the chicken pushes it back down a lane. "
        "The game lasts about two minutes and sixteen seconds."
    )
    minimal_actions = ("NOOP", "UP", "DOWN")
    words: ClassVar[dict[str, str]] = {"go up": "UP", "wait": "NOOP", "go down": "DOWN"}
    default_action = "go up"
    hint = "Go up whenever the lane ahead is clear; wait while a car is about to pass in the lane ahead."
    demonstrations = (
        (
            "You have crossed 0 of 10 lanes. Lane ahead: a car 44 px to the left, coming toward you. "
            "Situation: the lane ahead is clear and your lane is clear.",
            "go up",
        ),
        (
            "You have crossed 0 of 10 lanes. Lane ahead: a car 12 px to the left, coming toward you. "
            "Situation: a car is coming in the lane ahead and your lane is clear.",
            "wait",
        ),
        (
            "You are in lane 2 of 10. Your lane: a car 12 px to the left, coming toward you. "
            "Lane ahead: a car at your position. "
            "Situation: a car is coming in the lane ahead and a car is coming in your lane.",
            "go down",
        ),
    )
    situations = tuple(
        f"{ahead} and {here}"
        for ahead in ("the lane ahead is clear", "a car is coming in the lane ahead")
        for here in ("your lane is clear", "a car is coming in your lane")
    )
    variants: ClassVar[dict[str, Variant]] = {
        "mode-1": Variant("the cartridge's game mode 1 (other traffic) instead of 0", {"mode": 1}),
        "difficulty-1": Variant("the cartridge's difficulty 1 instead of 0", {"difficulty": 1}),
    }
    #: A car this close (pixels, horizontally) and approaching, or overlapping, makes a lane unsafe.
    #: Table play over 1,000 decisions, seeds 0-2: 14-15 points at 12 px (and at 8 or 4), 11-12 at 16,
    #: 8 at 24; always "go up" scores 11.
    NEAR = 12
    #: Half the height of a lane band, in pixels.
    BAND = 8

    def _lanes(self, env: gym.Env) -> tuple[Any, Any | None, Any | None, int]:
        """(chicken, car in its lane, car in the lane ahead, lanes crossed); lanes are matched by centres."""
        objects = self.objects(env)
        chicken = _first(objects, "Chicken")  # the first chicken is the player's (left one)
        y = _centre(chicken)[1]
        cars = sorted((o for o in objects if o.category == "Car"), key=lambda c: -c.y)  # bottom lane first
        here = next((c for c in cars if abs(_centre(c)[1] - y) < self.BAND), None)
        ahead = next((c for c in cars if _centre(c)[1] <= y - self.BAND), None)
        crossed = sum(_centre(c)[1] >= y + self.BAND for c in cars)
        return chicken, here, ahead, crossed

    def _danger(self, car: Any | None, chicken: Any) -> tuple[bool, str]:
        """(unsafe, words) for one lane's car."""
        if car is None:
            return False, "no car"
        gap = car.x + car.w / 2 - (chicken.x + chicken.w / 2)
        overlap = abs(gap) <= (car.w + chicken.w) / 2
        approaching = car.dx != 0 and (gap > 0) == (car.dx < 0)
        side = "right" if gap > 0 else "left"
        words = "a car at your position" if overlap else (
            f"a car {_px(abs(gap))} px to the {side}, {'coming toward you' if approaching else 'moving away'}")
        return overlap or (approaching and abs(gap) <= self.NEAR), words

    def describe(self, obs: Any, env: gym.Env) -> str:
        chicken, here, ahead, crossed = self._lanes(env)
        if here is not None:
            text = f"You are in lane {crossed + 1} of 10."
        else:
            text = f"You have crossed {crossed} of 10 lanes."
        if here is not None:
            text += f" Your lane: {self._danger(here, chicken)[1]}."
        if ahead is not None:
            text += f" Lane ahead: {self._danger(ahead, chicken)[1]}."
        else:
            text += " No lane ahead: the top is next."
        return text

    def potential(self, obs: Any, env: gym.Env) -> float:
        """The share of the crossing done: a crossing scores 1."""
        return self._lanes(env)[3] / 10

    def situation(self, obs: Any, env: gym.Env) -> str:
        chicken, here, ahead, _ = self._lanes(env)
        ahead_bad = self._danger(ahead, chicken)[0]
        here_bad = self._danger(here, chicken)[0]
        return (f"{'a car is coming in the lane ahead' if ahead_bad else 'the lane ahead is clear'} and "
                f"{'a car is coming in your lane' if here_bad else 'your lane is clear'}")


class Boxing(AtariCard):
    game = "Boxing"
    instructions = (
        "You play Boxing, seen from above: you are the white boxer and punch the black one. A punch that "
        "lands scores a point; the bout ends after two minutes or at 100 points. Punches reach only an "
        "opponent level with you and close to your side."
    )
    minimal_actions = ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
                       "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
                       "DOWNLEFTFIRE")
    words: ClassVar[dict[str, str]] = {"punch": "FIRE", "move up": "UP", "move down": "DOWN", "move left": "LEFT",
                                       "move right": "RIGHT", "stay": "NOOP"}
    default_action = "punch"
    hint = "Get level with the opponent and close to its side, then punch; keep moving toward it otherwise."
    demonstrations = (
        (
            "The opponent is 16 px to your right and 4 px above you. Situation: the opponent is within reach.",
            "punch",
        ),
        (
            "The opponent is 76 px to your right and 76 px below you. Situation: the opponent is below you.",
            "move down",
        ),
        (
            "The opponent is 28 px to your right and 4 px above you. "
            "Situation: the opponent is to your right, out of reach.",
            "move right",
        ),
    )
    situations = (
        "the opponent is within reach",
        "the opponent is above you",
        "the opponent is below you",
        "the opponent is to your left, out of reach",
        "the opponent is to your right, out of reach",
    )
    variants: ClassVar[dict[str, Variant]] = {
        "difficulty-1": Variant("the cartridge's difficulty 1 instead of 0", {"difficulty": 1}),
        "difficulty-2": Variant("the cartridge's difficulty 2 instead of 0", {"difficulty": 2}),
    }
    #: Vertical and horizontal offsets (pixels, centre to centre) a punch lands within.
    LEVEL, REACH = 4, 28

    def _offset(self, env: gym.Env) -> tuple[float, float]:
        """(right, down) offset of the opponent's centre from yours."""
        objects = self.objects(env)
        me, them = _first(objects, "Player"), _first(objects, "Enemy")
        (mx, my), (tx, ty) = _centre(me), _centre(them)
        return tx - mx, ty - my

    def describe(self, obs: Any, env: gym.Env) -> str:
        right, down = self._offset(env)
        across = f"{_px(abs(right))} px to your {'right' if right > 0 else 'left'}" if _px(right) else ""
        updown = f"{_px(abs(down))} px {'below' if down > 0 else 'above'} you" if _px(down) else "level with you"
        return f"The opponent is {across + ' and ' if across else ''}{updown}."

    def situation(self, obs: Any, env: gym.Env) -> str:
        right, down = self._offset(env)
        if abs(down) > self.LEVEL:
            return f"the opponent is {'below' if down > 0 else 'above'} you"
        if abs(right) <= self.REACH:
            return "the opponent is within reach"
        return f"the opponent is to your {'right' if right > 0 else 'left'}, out of reach"


class SpaceInvaders(AtariCard):
    game = "SpaceInvaders"
    instructions = (
        "You play Space Invaders: you move a laser cannon left and right along the bottom and fire up at rows "
        "of aliens that march down and drop bombs. Each alien shot scores; a bomb that hits you costs a life, "
        "and the game ends when the three lives are gone or the aliens land."
    )
    minimal_actions = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
    words: ClassVar[dict[str, str]] = {"fire": "FIRE", "stay": "NOOP", "move left": "LEFT", "move right": "RIGHT"}
    default_action = "fire"
    hint = "Dodge a bomb falling at you; otherwise fire when an alien is straight above you, else move under one."
    demonstrations = (
        (
            "Your cannon is at x 36 of 160; 36 aliens left. Nearest alien: 4 px to the right, 64 px up. "
            "Situation: an alien is straight above you.",
            "fire",
        ),
        (
            "Your cannon is at x 36 of 160; 36 aliens left. Nearest alien: 8 px to the right, 64 px up. "
            "Situation: the nearest alien is to your right.",
            "move right",
        ),
        (
            "Your cannon is at x 40 of 160; 36 aliens left. Nearest alien: 4 px to the right, 64 px up. "
            "A bomb 56 px above you is falling at you. Situation: a bomb is falling at you.",
            "move left",
        ),
    )
    situations = (
        "a bomb is falling at you",
        "an alien is straight above you",
        "the nearest alien is to your left",
        "the nearest alien is to your right",
        "no alien is left",
    )
    variants: ClassVar[dict[str, Variant]] = {
        "mode-1": Variant("the cartridge's game mode 1 instead of 0", {"mode": 1}),
        "difficulty-1": Variant("the cartridge's difficulty 1 instead of 0", {"difficulty": 1}),
    }
    #: Horizontal distance (pixels, centre to centre) that counts as straight above you.
    ABOVE = 6

    def _scene(self, env: gym.Env) -> tuple[Any, Any | None, Any | None]:
        """(cannon, nearest alien by horizontal distance, nearest bomb falling within reach of the cannon)."""
        objects = self.objects(env)
        cannon = _first(objects, "Player")
        cx = _centre(cannon)[0]
        aliens = [o for o in objects if o.category == "Alien"]
        alien = min(aliens, key=lambda a: (abs(_centre(a)[0] - cx), -a.y), default=None)
        bombs = [o for o in objects if o.category == "Bullet" and o.dy > 0 and o.y < cannon.y
                 and abs(_centre(o)[0] - cx) <= cannon.w]
        bomb = max(bombs, key=lambda b: b.y, default=None)
        return cannon, alien, bomb

    def describe(self, obs: Any, env: gym.Env) -> str:
        cannon, alien, bomb = self._scene(env)
        cx, cy = _centre(cannon)
        aliens = sum(o.category == "Alien" for o in self.objects(env))
        text = f"Your cannon is at x {_px(cx)} of 160; {aliens} aliens left."
        if alien is not None:
            ax, ay = _centre(alien)
            side = f"{_px(abs(ax - cx))} px to the {'right' if ax > cx else 'left'}" if _px(ax - cx) else "straight"
            text += f" Nearest alien: {side}, {_px(cy - ay)} px up."
        if bomb is not None:
            text += f" A bomb {_px(cy - _centre(bomb)[1])} px above you is falling at you."
        return text

    def situation(self, obs: Any, env: gym.Env) -> str:
        cannon, alien, bomb = self._scene(env)
        if bomb is not None:
            return "a bomb is falling at you"
        if alien is None:
            return "no alien is left"
        gap = _centre(alien)[0] - _centre(cannon)[0]
        if abs(gap) <= self.ABOVE:
            return "an alien is straight above you"
        return f"the nearest alien is to your {'right' if gap > 0 else 'left'}"


class Asterix(AtariCard):
    game = "Asterix"
    instructions = (
        "You play Asterix: you move between eight horizontal lanes and along them. Objects fly along the "
        "lanes: items you touch score points, lyres you touch cost a life. The game ends when the lives are gone."
    )
    minimal_actions = ("NOOP", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT")
    words: ClassVar[dict[str, str]] = {"move up": "UP", "move down": "DOWN", "move left": "LEFT",
                                       "move right": "RIGHT", "stay": "NOOP"}
    default_action = "stay"
    hint = "Leave a lane where a lyre comes close; move toward items, in your lane or the next."
    demonstrations = (
        (
            "You are in lane 4 of 8. Your lane: an item 8 px to the right. "
            "Situation: an item is to your right in your lane.",
            "move right",
        ),
        (
            "You are in lane 4 of 8. Lane above: a lyre 40 px to the right. "
            "Your lane: a lyre 32 px to the right. Lane below: a lyre 40 px to the right. "
            "Situation: a lyre is close in your lane.",
            "move up",
        ),
        (
            "You are in lane 4 of 8. The lanes near you are empty. Situation: nothing is near.",
            "stay",
        ),
    )
    situations = (
        "a lyre is close in your lane",
        "an item is to your left in your lane",
        "an item is to your right in your lane",
        "an item is in the lane above",
        "an item is in the lane below",
        "nothing is near",
    )
    #: A lyre this close (pixels, horizontally) in your lane is a danger.
    NEAR = 32
    #: Lanes are this many pixels apart.
    LANE = 16

    def _lane(self, env: gym.Env, offset: int) -> Any | None:
        """The object in the lane ``offset`` lanes below yours (negative: above), if any."""
        objects = self.objects(env)
        me = _first(objects, "Player")
        return next((o for o in objects if o.category != "Player" and o.y == me.y + offset * self.LANE), None)

    @staticmethod
    def _kind(o: Any) -> str:
        return "a lyre" if o.category == "Enemy" else "an item"

    def describe(self, obs: Any, env: gym.Env) -> str:
        me = _first(self.objects(env), "Player")
        parts = []
        for offset, name in ((-1, "Lane above"), (0, "Your lane"), (1, "Lane below")):
            o = self._lane(env, offset)
            if o is not None:
                gap = _centre(o)[0] - _centre(me)[0]
                side = f"{_px(abs(gap))} px to the {'right' if gap > 0 else 'left'}" if _px(gap) else "on you"
                parts.append(f"{name}: {self._kind(o)} {side}.")
        near = " ".join(parts) or "The lanes near you are empty."
        return f"You are in lane {(me.y - 26) // self.LANE + 1} of 8. {near}"

    def situation(self, obs: Any, env: gym.Env) -> str:
        me = _first(self.objects(env), "Player")
        here = self._lane(env, 0)
        if here is not None:
            gap = _centre(here)[0] - _centre(me)[0]
            if here.category == "Enemy":
                if abs(gap) <= self.NEAR:
                    return "a lyre is close in your lane"
            else:
                return f"an item is to your {'left' if gap < 0 else 'right'} in your lane"
        for offset, where in ((-1, "above"), (1, "below")):
            o = self._lane(env, offset)
            if o is not None and o.category != "Enemy":
                return f"an item is in the lane {where}"
        return "nothing is near"


CARDS: list[Card] = [Pong(), Breakout(), Freeway(), Boxing(), SpaceInvaders(), Asterix()]
