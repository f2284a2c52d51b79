"""Environment cards: everything the framework knows about one environment.

A card turns a raw Gymnasium observation into short text (numbers read aloud
with units) plus a *situation* phrase (the discrete, qualitative part that
knowledge is stored under), and maps action words to the environment's
actions. The built-in cards live in the repository's ``envs/`` folder, which
installs as the package ``llmrl.envs``; further cards in any folder or file
named by the ``LLMRL_CARDS`` environment variable (``os.pathsep``-separated).
Each module lists its cards in ``CARDS``. Adding an environment therefore needs
no change to ``llmrl/`` (see docs/cards.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym

import llmrl.envs
from llmrl.errors import UsageError

BUILTIN_CARDS = Path(llmrl.envs.__file__).parent

#: The phrase that ends every observation text (:meth:`Card.text`): `` Situation: S.``
_SITUATION = re.compile(r"Situation: (.+)\.$")


def situation_of(text: str) -> str | None:
    """The situation an observation text ends with (None: a text no card wrote)."""
    match = _SITUATION.search(text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Variant:
    """A changed version of an environment, for portability tests.

    ``make_kwargs`` go to ``gym.make``; ``attributes`` are set on the
    unwrapped environment after it is made (physics constants of classic
    control environments are plain attributes, not constructor arguments).
    """

    description: str
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Every action word of :attr:`Card.opposites` has its opposite's effect: a task that contradicts the
    #: original (for continual streams), so portability leaves it out.
    mirrored: bool = False


#: The variant every card with :attr:`Card.opposites` gets.
MIRRORED = Variant("controls mirrored: every action word has its opposite's effect", mirrored=True)


class MirroredActions(gym.ActionWrapper):
    """Plays each action word's opposite: the environment action values swapped pairwise."""

    def __init__(self, env: gym.Env, swap: dict[Any, Any]):
        super().__init__(env)
        self.swap = swap

    def action(self, action: Any) -> Any:
        return self.swap.get(action, action)


class Card:
    """Base class of environment cards; subclass it and fill in the blanks.

    Subclasses set the class attributes and implement :meth:`describe` and
    :meth:`situation`. ``actions`` maps each action word to the value passed
    to ``env.step``; its order is the order the policy scores them in.
    """

    env_id: ClassVar[str]
    #: Registry key; defaults to ``env_id``.
    name: ClassVar[str | None] = None
    instructions: ClassVar[str]
    actions: ClassVar[dict[str, Any]] = {}
    #: A short expert hint for the expert-hint baseline.
    hint: ClassVar[str] = ""
    #: Action word used when a generated answer cannot be parsed.
    default_action: ClassVar[str | None] = None
    #: (observation text, action word) examples for the few-shot baseline.
    demonstrations: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Every situation phrase :meth:`situation` can return, when enumerable.
    situations: ClassVar[tuple[str, ...]] = ()
    make_kwargs: ClassVar[dict[str, Any]] = {}
    variants: ClassVar[dict[str, Variant]] = {}
    #: Modules to import before ``gym.make`` (they register the environments).
    requires: ClassVar[tuple[str, ...]] = ()
    #: Cards of one family share settings files (``configs/ppo/<family>.yaml``).
    family: ClassVar[str | None] = None
    #: Other observations :meth:`make_env` can give than the environment's own (e.g. "pixels" for Atari),
    #: for policies that read observations rather than texts.
    observations: ClassVar[tuple[str, ...]] = ()
    #: Action words with opposite effects, each pair once (``{"left": "right"}``); a card that has them gets
    #: the ``mirrored`` variant, where each of these words does what its opposite does.
    opposites: ClassVar[dict[str, str]] = {}
    #: Bump it when a change to the card changes what a run on it measures (its texts, situations,
    #: actions or potential): ``llmrl ablate`` redoes runs recorded with another version instead of
    #: reusing them, as the run config alone cannot see a change in the card's code.
    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.opposites and "mirrored" not in cls.variants:
            cls.variants = {**cls.variants, "mirrored": MIRRORED}

    @property
    def key(self) -> str:
        return self.name or self.env_id

    @property
    def action_words(self) -> list[str]:
        return list(self.actions)

    @property
    def default_action_word(self) -> str:
        return self.default_action or self.action_words[0]

    def opposite(self, word: str) -> str:
        """The word whose effect ``word`` has in the mirrored variant (itself when it has no opposite)."""
        for a, b in self.opposites.items():
            if word in (a, b):
                return b if word == a else a
        return word

    def describe(self, obs: Any, env: gym.Env) -> str:
        """The observation's numbers read aloud, short, with units."""
        raise NotImplementedError

    def situation(self, obs: Any, env: gym.Env) -> str:
        """The qualitative state as one lower-case phrase."""
        raise NotImplementedError

    def potential(self, obs: Any, env: gym.Env) -> float | None:
        """A rough value of the state in reward units, or None (the default: no estimate).

        Sparse-reward tasks give Monte-Carlo feedback nothing to compare until
        an episode succeeds. With ``n_step`` set, the loop scores an action by
        the n-step return bootstrapped with this potential minus the potential
        where it was taken: potential-based shaping (Ng, Harada & Russell,
        ICML 1999), which leaves the task's optimal policies unchanged.
        Terminal states count as 0, so scale it like the return still to come.
        """
        return None

    def text(self, obs: Any, env: gym.Env) -> tuple[str, str]:
        """(observation text, situation); the situation phrase ends the text."""
        sit = self.situation(obs, env)
        if self.situations and sit not in self.situations:
            raise ValueError(f"card {self.key} returned situation {sit!r}, which its situations list lacks")
        return f"{self.describe(obs, env)} Situation: {sit}.", sit

    def make_env(self, variant: str | None = None, observation: str | None = None, **kwargs: Any) -> gym.Env:
        """Make the Gymnasium environment, optionally in one of the variants and with another observation."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                if isinstance(exc, UsageError):
                    raise
                raise UsageError(f"card {self.key} requires module {module!r}, which cannot be imported: "
                                 f"{exc}") from exc
        spec = Variant("", {}, {})
        if variant is not None:
            if variant not in self.variants:
                known = ", ".join(self.variants) or "none"
                raise UsageError(f"card {self.key} has no variant {variant!r} (variants: {known})")
            spec = self.variants[variant]
        if observation is not None and observation not in self.observations:
            known = ", ".join(self.observations) or "only the environment's own"
            raise UsageError(f"card {self.key} gives no {observation!r} observation (it gives {known})")
        try:
            env = self.build({**self.make_kwargs, **spec.make_kwargs, **kwargs}, observation)
        except gym.error.Error as exc:  # not registered, a removed version, a missing dependency
            raise UsageError(f"card {self.key}: Gymnasium cannot make {self.env_id}: {exc}") from exc
        for attr, value in spec.attributes.items():
            setattr(env.unwrapped, attr, value)
        self.check(env)
        if spec.mirrored:
            env = MirroredActions(env, {self.actions[w]: self.actions[self.opposite(w)] for w in self.actions})
        return env

    def build(self, kwargs: dict[str, Any], observation: str | None) -> gym.Env:
        """``gym.make`` plus the wrappers the card reads through; ``observation`` is one of :attr:`observations`."""
        return gym.make(self.env_id, **kwargs)

    def check(self, env: gym.Env) -> None:
        """Fail clearly when the card cannot drive this environment."""
        if not self.actions:
            space = env.action_space
            kind = "discrete" if isinstance(space, gym.spaces.Discrete) else "non-discrete"
            raise UsageError(f"card {self.key} gives no action words for its {kind} action space {space}")
        for word, value in self.actions.items():
            if not env.action_space.contains(value):
                raise UsageError(f"card {self.key}: action {word!r} -> {value!r} is not in {env.action_space}")
        if self.default_action is not None and self.default_action not in self.actions:
            raise UsageError(f"card {self.key}: default action {self.default_action!r} is not an action word")
        paired = [w for pair in self.opposites.items() for w in pair]
        if set(paired) - set(self.actions) or len(set(paired)) != len(paired):
            raise UsageError(f"card {self.key}: opposites {self.opposites} must pair distinct action words, "
                             "each in one pair at most")


_REGISTRY: dict[str, Card] = {}
_LOADED = False


def card_paths() -> list[Path]:
    """Card modules: the built-in ones (``llmrl.envs``), then ``LLMRL_CARDS`` entries."""
    roots = [BUILTIN_CARDS] + [Path(p) for p in os.environ.get("LLMRL_CARDS", "").split(os.pathsep) if p]
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files += sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
        elif root.suffix == ".py" and root.is_file():
            files.append(root)
        else:
            raise UsageError(f"LLMRL_CARDS entry {root} is neither a folder nor a .py file")
    return files


def _load_module(path: Path) -> None:
    """Import a card module: a built-in one as ``llmrl.envs.<name>`` (so that a user's card can subclass
    its classes from the same module), any other from its file as ``llmrl_cards.<name>``."""
    try:
        if path.parent == BUILTIN_CARDS:
            module = importlib.import_module(f"llmrl.envs.{path.stem}")
        else:
            name = f"llmrl_cards.{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    except Exception as exc:  # a broken user card must not look like an llmrl bug
        raise UsageError(f"cannot load card module {path}: {type(exc).__name__}: {exc}") from exc
    cards = getattr(module, "CARDS", None)
    if cards is None:
        raise UsageError(f"card module {path} defines no CARDS list")
    for card in cards:
        register(card)


def register(card: Card) -> None:
    """Add a card to the registry; a later card with the same key replaces it."""
    if not isinstance(card, Card):
        raise UsageError(f"{card!r} is not a Card instance")
    _REGISTRY[card.key] = card


def all_cards() -> dict[str, Card]:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for path in card_paths():
            _load_module(path)
    return dict(_REGISTRY)


def get_card(env: str) -> tuple[Card, str | None]:
    """Look up ``ENV`` or ``ENV:VARIANT``; returns the card and the variant name."""
    key, _, variant = env.partition(":")
    cards = all_cards()
    if key not in cards:
        raise UsageError(
            f"no card for environment {key!r}; known: {', '.join(sorted(cards))} "
            "(add one in a folder named by LLMRL_CARDS; see docs/cards.md)"
        )
    card = cards[key]
    if variant and variant not in card.variants:
        known = ", ".join(card.variants) or "none"
        raise UsageError(f"card {key} has no variant {variant!r} (variants: {known})")
    return card, variant or None
