"""Every strategy llmrl can run, in one place: its name, its kind and what it needs.

A grid cell, a report row and a command-line choice all name a strategy; this
registry is the one list they read, so a new strategy is added here once and
the grid runner, the report and the command line follow.

Kinds: ``random`` (the floor), ``prompt`` (a prompt-engineering baseline: one
:class:`~llmrl.policy.LLMPolicy` with another prompt), ``edit`` (the editing
loop with one of the knowledge injectors) and ``ppo`` (stable-baselines3's
PPO reading one of the card's observations).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

Kind = Literal["random", "prompt", "edit", "ppo"]


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: Kind
    #: ``edit``: the injector class, as ``module:Class`` (imported only when a run needs it).
    injector: str | None = None
    #: ``ppo``: the card observation it reads (None: the environment's own).
    observation: str | None = None

    @property
    def needs_model(self) -> bool:
        return self.kind in ("prompt", "edit")


#: In the order reports list them.
STRATEGIES: tuple[Strategy, ...] = (
    Strategy("random", "random"),
    Strategy("zero-shot", "prompt"),
    Strategy("few-shot", "prompt"),
    Strategy("chain-of-thought", "prompt"),
    Strategy("expert-hint", "prompt"),
    Strategy("context", "edit", injector="llmrl.inject.context:ContextInjector"),
    Strategy("adapter", "edit", injector="llmrl.inject.adapter:AdapterInjector"),
    Strategy("weights", "edit", injector="llmrl.inject.weights:WeightsInjector"),
    Strategy("ppo", "ppo"),
    Strategy("ppo-pixels", "ppo", observation="pixels"),
)
BY_NAME = {s.name: s for s in STRATEGIES}
NAMES = tuple(BY_NAME)


def names(*kinds: Kind) -> tuple[str, ...]:
    """The names of the strategies of these kinds, in report order."""
    return tuple(s.name for s in STRATEGIES if s.kind in kinds)


#: The policies ``llmrl eval`` plays without a run: random and the prompt baselines.
BASELINES = names("random", "prompt")
PROMPT_BASELINES = names("prompt")
EDIT_STRATEGIES = names("edit")
PPO_LEARNERS = names("ppo")
#: How an editing learner's changes of knowledge reach its policy (see llmrl.learner.Learner): undo and
#: inject every item held, or edit the new items on top of the earlier edits.
ACCUMULATE = ("rebuild", "sequential")


@dataclass(frozen=True)
class Method:
    """One knowledge-editing method: an edit strategy and the injector options that select it.

    ``family`` is the survey's family the method belongs to, ``paper`` its anchor.
    """

    name: str
    strategy: str
    options: tuple[tuple[str, object], ...]
    family: str
    paper: str


#: The methods by their command-line names (``llmrl bench edits --method``).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("context", "context", (), "in-context editing: rules and demonstrations",
           "IKE (Zheng et al., EMNLP 2023)"),
    Method("rag", "context", (("rules", False), ("k", 4), ("fill", True)), "retrieval augmentation: k stored cases per "
           "observation", "RAG (Lewis et al., NeurIPS 2020)"),
    Method("lora", "adapter", (), "reparameterised PET", "LoRA (Hu et al., ICLR 2022)"),
    Method("ia3", "adapter", (("kind", "ia3"),), "additive PET: learned activation scales",
           "IA3 (Liu et al., NeurIPS 2022)"),
    Method("prefix", "adapter", (("kind", "prefix"),), "additive PET: trained virtual tokens",
           "Prefix tuning (Li & Liang, ACL 2021)"),
    Method("bitfit", "adapter", (("kind", "bitfit"),), "specification PET: biases only",
           "BitFit (Ben Zaken et al., ACL 2022)"),
    Method("rome", "weights", (("method", "rome"),), "locate-then-edit", "ROME (Meng et al., NeurIPS 2022)"),
    Method("memit", "weights", (("method", "memit"),), "locate-then-edit", "MEMIT (Meng et al., ICLR 2023)"),
    Method("alphaedit", "weights", (("method", "memit"), ("null_space", True)),
           "locate-then-edit, null-space projected", "AlphaEdit (Fang et al., ICLR 2025)"),
    Method("ft-l", "weights", (("method", "ft-l"),), "locate-then-edit: constrained fine-tuning",
           "FT-L (Zhu et al., 2020; the baseline of ROME, Meng et al., NeurIPS 2022)"),
)}


def order(name: str) -> tuple[int, str]:
    """Sort key: report order; unknown names after it, alphabetically."""
    return (NAMES.index(name) if name in BY_NAME else len(NAMES), name)


def injector_class(name: str) -> type:
    """The injector class of edit strategy ``name``."""
    module, _, cls = BY_NAME[name].injector.partition(":")  # type: ignore[union-attr]
    return getattr(importlib.import_module(module), cls)
