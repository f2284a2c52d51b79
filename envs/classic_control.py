"""Cards for Gymnasium's classic control tasks and LunarLander.

Numbers are read aloud with units and coarse rounding: short texts keep the
prompt cheap, and coarse ones repeat often, so the policy's decision cache
answers many steps for free. Each situation phrase is the qualitative reading
that a fixed situation -> action table can act on well (tests check this).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, ClassVar

import gymnasium as gym

from llmrl.cards import Card, Variant


def _num(value: float, step: float) -> str:
    """``value`` rounded to a multiple of ``step``, with no more decimals than ``step`` has."""
    decimals = max(0, -int(Decimal(str(step)).as_tuple().exponent))
    text = f"{round(value / step) * step:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if float(text) == 0 else text


def _signed(value: float, step: float, unit: str, neg: str, pos: str) -> str | None:
    """'0.3 m/s right' style magnitude plus direction word; None when it rounds to zero."""
    magnitude = _num(abs(value), step)
    if magnitude == "0":
        return None
    return f"{magnitude}{unit} {pos if value > 0 else neg}"


class CartPole(Card):
    env_id = "CartPole-v1"
    instructions = (
        "You move a cart left or right to keep the pole on it upright. "
        "The episode ends when the pole tips past 12 degrees or the cart leaves the track."
    )
    actions: ClassVar[dict[str, Any]] = {"left": 0, "right": 1}
    opposites: ClassVar[dict[str, str]] = {"left": "right"}
    hint = "Push the cart toward the side the pole is falling to."
    situations = (
        "the pole is falling to the left",
        "the pole is falling to the right",
        "the pole is balanced and the cart drifts left",
        "the pole is balanced and the cart drifts right",
    )
    demonstrations = (
        (
            "Cart at center, standing still. Pole 1° left of upright, turning 10°/s left. "
            "Situation: the pole is falling to the left.",
            "left",
        ),
        (
            "Cart at center, moving 0.2 m/s left. Pole 1° right of upright, turning 20°/s right. "
            "Situation: the pole is falling to the right.",
            "right",
        ),
        (
            "Cart 0.5 m left of center, moving 0.2 m/s left. Pole upright, not turning. "
            "Situation: the pole is balanced and the cart drifts left.",
            "left",
        ),
    )
    # Setting masspole or length alone leaves CartPole's derived constants stale.
    variants: ClassVar[dict[str, Variant]] = {
        "heavy-long-pole": Variant(
            "pole five times heavier and twice as long",
            attributes={"masspole": 0.5, "length": 1.0, "total_mass": 1.5, "polemass_length": 0.5},
        ),
    }

    #: Seconds ahead the pole's tilt is projected when judging where it falls.
    LOOKAHEAD_S = 0.25
    #: Projected tilt (radians) below which the pole counts as balanced.
    BALANCED_RAD = math.radians(1.0)

    def describe(self, obs: Any, env: gym.Env) -> str:
        x, v, theta, omega = (float(o) for o in obs)
        cart = _signed(x, 0.1, " m", "left of center", "right of center")
        speed = _signed(v, 0.1, " m/s", "left", "right")
        tilt = _signed(math.degrees(theta), 1, "°", "left of upright", "right of upright")
        turn = _signed(math.degrees(omega), 10, "°/s", "left", "right")
        return (
            f"Cart {cart or 'at center'}, {f'moving {speed}' if speed else 'standing still'}. "
            f"Pole {tilt or 'upright'}, {f'turning {turn}' if turn else 'not turning'}."
        )

    def situation(self, obs: Any, env: gym.Env) -> str:
        x, v, theta, omega = (float(o) for o in obs)
        projected = theta + self.LOOKAHEAD_S * omega
        if abs(projected) > self.BALANCED_RAD:
            return f"the pole is falling to the {'right' if projected > 0 else 'left'}"
        # Where the cart will be in a second; the table pushes that way to re-centre it.
        return f"the pole is balanced and the cart drifts {'right' if x + v > 0 else 'left'}"


class MountainCar(Card):
    env_id = "MountainCar-v0"
    instructions = (
        "You drive an underpowered car out of a valley to the flag on the right hilltop at 0.5 m. "
        "The engine is too weak to climb straight up; the episode ends at the flag or after 200 steps."
    )
    actions: ClassVar[dict[str, Any]] = {"push left": 0, "no push": 1, "push right": 2}
    opposites: ClassVar[dict[str, str]] = {"push left": "push right"}
    hint = "Push in the direction the car is already moving to build up momentum by rocking back and forth."
    default_action = "no push"
    situations = (
        "the car is rolling left",
        "the car is rolling right",
        "the car is standing still",
    )
    demonstrations = (
        (
            "Car at -0.5 m, standing still. Situation: the car is standing still.",
            "push left",
        ),
        (
            "Car at 0 m, moving 7 mm per step left. Situation: the car is rolling left.",
            "push left",
        ),
        (
            "Car at -0.5 m, moving 45 mm per step right. Situation: the car is rolling right.",
            "push right",
        ),
    )
    variants: ClassVar[dict[str, Variant]] = {
        "weak-engine": Variant("engine force 0.0008 instead of 0.001", attributes={"force": 0.0008}),
        "strong-engine": Variant("engine force 0.0015 instead of 0.001", attributes={"force": 0.0015}),
    }

    #: Speeds (position units per step) below this read as standing still.
    STILL = 0.0005
    #: Steps a momentum-building policy needs from the valley floor (the oracle table in the tests: 128).
    STEPS = 120

    def potential(self, obs: Any, env: gym.Env) -> float:
        """Mechanical energy as the share still missing to reach the flag, times -STEPS."""
        position, velocity = (float(o) for o in obs)
        car = env.unwrapped
        height = lambda x: car.gravity / 3 * math.sin(3 * x)  # noqa: E731  (the force's antiderivative)
        energy = velocity**2 / 2 + height(position)
        goal, floor = height(car.goal_position), -car.gravity / 3
        return -self.STEPS * min(max((goal - energy) / (goal - floor), 0.0), 1.0)

    def describe(self, obs: Any, env: gym.Env) -> str:
        position, velocity = (float(o) for o in obs)
        speed = _signed(velocity * 1000, 1, " mm per step", "left", "right")
        return f"Car at {_num(position, 0.1)} m, {f'moving {speed}' if speed else 'standing still'}."

    def situation(self, obs: Any, env: gym.Env) -> str:
        velocity = float(obs[1])
        if abs(velocity) < self.STILL:
            return "the car is standing still"
        return f"the car is rolling {'right' if velocity > 0 else 'left'}"


class Acrobot(Card):
    env_id = "Acrobot-v1"
    instructions = (
        "You apply torque at the joint between two hanging 1 m links to swing the tip up. The first angle is "
        "the upper link's from hanging straight down, the second the lower link's bend relative to the upper "
        "one, counterclockwise positive. The episode ends when the tip rises above 1 m over the pivot."
    )
    actions: ClassVar[dict[str, Any]] = {"clockwise": 0, "no torque": 1, "counterclockwise": 2}
    opposites: ClassVar[dict[str, str]] = {"clockwise": "counterclockwise"}
    hint = "Apply torque in the direction the lower link is swinging, to pump energy into the arm."
    default_action = "no torque"
    situations = (
        "the lower link swings clockwise",
        "the lower link swings counterclockwise",
    )
    demonstrations = (
        (
            "Links at 80° and -40°, turning 3 and -10 rad/s. Tip height -1 m. "
            "Situation: the lower link swings clockwise.",
            "clockwise",
        ),
        (
            "Links at -20° and -160°, turning -4 and 1 rad/s. Tip height 0 m. "
            "Situation: the lower link swings counterclockwise.",
            "counterclockwise",
        ),
    )
    variants: ClassVar[dict[str, Variant]] = {
        "heavy-lower-link": Variant("lower link mass 2 kg instead of 1 kg", attributes={"LINK_MASS_2": 2.0}),
    }

    def describe(self, obs: Any, env: gym.Env) -> str:
        cos1, sin1, cos2, sin2, omega1, omega2 = (float(o) for o in obs)
        theta1, theta2 = math.atan2(sin1, cos1), math.atan2(sin2, cos2)
        # Tip height above the pivot, both links 1 m long.
        tip = -cos1 - math.cos(theta1 + theta2)
        return (
            f"Links at {_num(math.degrees(theta1), 20)}° and {_num(math.degrees(theta2), 20)}°, "
            f"turning {_num(omega1, 1)} and {_num(omega2, 1)} rad/s. Tip height {_num(tip, 0.5)} m."
        )

    def situation(self, obs: Any, env: gym.Env) -> str:
        return f"the lower link swings {'counterclockwise' if float(obs[5]) > 0 else 'clockwise'}"

    #: Steps a pumping policy needs from hanging still (the oracle table in the tests: 82).
    STEPS = 100

    def potential(self, obs: Any, env: gym.Env) -> float:
        """The tip's height still missing to the 1 m line (from -2 m hanging), times -STEPS / 3."""
        cos1, sin1, cos2, sin2 = (float(o) for o in obs[:4])
        tip = -cos1 - (cos1 * cos2 - sin1 * sin2)
        return -self.STEPS * min(max((1.0 - tip) / 3.0, 0.0), 1.0)


# Situation parts of LunarLander, each in (left, middle, right) or (fast, slow) order.
_LEANS = ("tips left", "is upright", "tips right")
_DRIFTS = ("drifts left", "holds course", "drifts right")
_DESCENTS = ("falls fast", "sinks slowly")


class LunarLander(Card):
    env_id = "LunarLander-v3"
    instructions = (
        "You fire a lander's engines to touch down gently on the pad between the flags. "
        "The episode ends when the lander comes to rest, crashes or flies off screen."
    )
    actions: ClassVar[dict[str, Any]] = {"wait": 0, "left engine": 1, "main engine": 2, "right engine": 3}
    opposites: ClassVar[dict[str, str]] = {"left engine": "right engine"}
    hint = (
        "Fire the main engine when falling fast; fire the left engine to tilt left and the right engine "
        "to tilt right, leaning against your drift so the thrust steers you back over the pad."
    )
    default_action = "wait"
    situations = ("the lander is touching down",) + tuple(
        f"the lander {lean}, {drift} and {descent}" for lean in _LEANS for drift in _DRIFTS for descent in _DESCENTS
    )
    demonstrations = (
        (
            "Lander over the pad, 9 m up; moving 3 m/s right, 5 m/s down; tilted 0°. "
            "Situation: the lander is upright, drifts right and sinks slowly.",
            "left engine",
        ),
        (
            "Lander 1 m left, 3 m up; moving 1 m/s left, 2 m/s down; tilted 5° left. "
            "Situation: the lander is upright, holds course and falls fast.",
            "main engine",
        ),
        (
            "Lander 3 m right, 3 m up; moving 4 m/s down; tilted 30° left. "
            "Situation: the lander tips left, holds course and falls fast.",
            "right engine",
        ),
        (
            "Lander 1 m left, 0 m up; moving 0 m/s; tilted 0°. Left leg down. "
            "Situation: the lander is touching down.",
            "wait",
        ),
    )
    variants: ClassVar[dict[str, Variant]] = {
        "windy": Variant("wind and turbulence on", make_kwargs={"enable_wind": True}),
        "low-gravity": Variant("gravity -5 instead of -10", make_kwargs={"gravity": -5.0}),
    }

    # The observation is scaled; these turn it back into metres, m/s and rad/s.
    _X_M, _Y_M, _VX_MS, _VY_MS, _SPIN_RADS = 10.0, 20.0 / 3.0, 5.0, 7.5, 2.5
    #: Projected tilt (rad) beyond which the lander leans.
    LEAN = 0.1
    #: Drift (scaled offset / 2 + scaled speed) beyond which the lander drifts.
    DRIFT = 0.2

    def describe(self, obs: Any, env: gym.Env) -> str:
        x, y, vx, vy, angle, spin, left_leg, right_leg = (float(o) for o in obs)
        where = _signed(x * self._X_M, 1, " m", "left", "right")
        across = _signed(vx * self._VX_MS, 1, " m/s", "left", "right")
        vertical = _signed(vy * self._VY_MS, 1, " m/s", "down", "up")
        moving = ", ".join(part for part in (across, vertical) if part) or "0 m/s"
        tilt = _signed(math.degrees(angle), 5, "°", "right", "left") or "0°"
        # Only the sense of a spin of 5°/s or more: its size is folded into the situation's "tips".
        spin_deg = math.degrees(spin * self._SPIN_RADS)
        turning = "" if abs(spin_deg) < 5 else f", turning {'left' if spin_deg > 0 else 'right'}"
        text = (
            f"Lander {where or 'over the pad'}, {_num(y * self._Y_M, 1)} m up; "
            f"moving {moving}; tilted {tilt}{turning}."
        )
        if left_leg and right_leg:
            return f"{text} Both legs down."
        if left_leg or right_leg:
            return f"{text} {'Left' if left_leg else 'Right'} leg down."
        return text

    def situation(self, obs: Any, env: gym.Env) -> str:
        x, y, vx, vy, angle, spin, left_leg, right_leg = (float(o) for o in obs)
        if left_leg or right_leg:
            return "the lander is touching down"
        projected = angle + spin  # counterclockwise (leaning left) is positive
        lean = 0 if projected > self.LEAN else 2 if projected < -self.LEAN else 1
        drift_to = x / 2 + vx  # where the lander is heading relative to the pad
        drift = 2 if drift_to > self.DRIFT else 0 if drift_to < -self.DRIFT else 1
        # Sinking faster than half the height (scaled units) plus a margin leaves too little room to brake.
        descent = 0 if -vy > y / 2 + 0.1 else 1
        return f"the lander {_LEANS[lean]}, {_DRIFTS[drift]} and {_DESCENTS[descent]}"


CARDS: list[Card] = [CartPole(), MountainCar(), Acrobot(), LunarLander()]
