"""Knowledge injectors: three ways to put knowledge items into a policy.

Every strategy is one module with one class that follows :class:`Injector`:
``inject(policy, items)`` changes the policy (its prompt, an adapter, or its
weights) and returns an :class:`Edit` that records the cost and can be undone
exactly. Injecting, evaluating and undoing any strategy in sequence leaves the
model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from llmrl.knowledge import KnowledgeItem
from llmrl.policy import LLMPolicy


@dataclass
class Edit:
    """One application of knowledge by one strategy."""

    strategy: str
    items: list[KnowledgeItem]
    seconds: float
    #: Number of scalar parameters whose value the edit changes (0 for context).
    params_touched: int
    _undo: Callable[[], None] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    undone: bool = False

    def undo(self) -> None:
        """Restore the policy exactly as it was before this edit; a second call is an error."""
        if self.undone:
            raise RuntimeError(f"{self.strategy} edit already undone")
        self._undo()
        self.undone = True


class Injector(Protocol):
    """A knowledge-injection strategy."""

    name: str
    #: Whether an edit can change the model's parameters (adapter, weights) or only a policy's prompt (context):
    #: without, the locality probe has nothing to measure.
    edits_parameters: bool

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        """Apply ``items`` to ``policy`` (invalidating its caches) and return the edit."""
        ...
