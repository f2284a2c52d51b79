"""Routed adapters: one LoRA or IA3 adapter per policy on one model, each read by its own policy alone.

GRACE (Hartvigsen et al., NeurIPS 2023) and WISE (Wang et al., NeurIPS 2024)
keep edits in a side memory that a router consults only for the inputs it
recognises, so one edit cannot reach another edit's inputs or unrelated ones.
Here the router is exact rather than learned: the policy (one per card in a
stream) whose engine runs a forward switches its own adapter on for that
forward (:attr:`llmrl.engine.Engine.route`). Any other forward (the locality
probe, a card whose policy has no adapter) reads none, so an adapter changes
nothing outside its own card, and cards never share trained parameters.

peft holds every adapter in the same wrapped layers, one name per adapter; the
:class:`Router` on the model switches among them. Removing the last adapter
unloads peft's layers, so the model returns bit-exactly to what it was.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from llmrl.engine import Engine
from llmrl.inject.adapter.tuners import carries_adapter, peft_config

#: Where a model keeps its :class:`Router`.
_ROUTER = "_llmrl_router"
#: The adapter kinds that can be routed: peft's, which keep several named adapters in the same layers.
ROUTED_KINDS = ("lora", "ia3")


class Router:
    """peft's named adapters on one model, at most one switched on at a time and none at rest."""

    def __init__(self, model: torch.nn.Module, name: str, config) -> None:
        self.model = model
        #: The base parameters' grad flags, back when the last adapter goes (peft freezes them meanwhile).
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations that peft still calls
            self.peft_model = get_peft_model(model, config, adapter_name=name)
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        self.names = [name]
        self.current: str | None = name
        self._switch(None)
        setattr(model, _ROUTER, self)

    @classmethod
    def attach(cls, model: torch.nn.Module, name: str, config) -> Router:
        """Add adapter ``name`` to the model's router, making the router on a model that has none."""
        router = getattr(model, _ROUTER, None)
        if router is None:
            if carries_adapter(model):
                raise RuntimeError("the model carries an adapter that is not routed; undo its edit first")
            return cls(model, name, config)
        router.peft_model.add_adapter(name, config)
        router.names.append(name)
        router._switch(router.current, force=True)  # peft switches the new adapter's layers on
        return router

    def _switch(self, name: str | None, force: bool = False) -> None:
        if name == self.current and not force:
            return
        for layer in self.layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.set_adapter(name)
                layer.enable_adapters(True)
        self.current = name

    @contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Switch adapter ``name`` on (None: every adapter off) for the block, then back."""
        before = self.current
        self._switch(name)
        try:
            yield
        finally:
            self._switch(before)

    def remove(self, name: str) -> None:
        """Delete adapter ``name``; after the last one, peft's layers go and the model is as it was."""
        self.names.remove(name)
        if not self.names:
            self.peft_model.unload()
            for n, p in self.model.named_parameters():
                p.requires_grad_(self.requires_grad[n])
            delattr(self.model, _ROUTER)
            return
        with warnings.catch_warnings():  # peft names the adapter it makes active; the router decides that
            warnings.filterwarnings("ignore", message=".*was active which is now deleted")
            self.peft_model.delete_adapter(name)
        self._switch(None if self.current == name else self.current, force=True)


class RoutedTuner:
    """One adapter of a :class:`Router`: on in the forwards of the engines it follows, off everywhere else."""

    merged = False

    def __init__(self, model: torch.nn.Module, kind: str, targets: list[str], layers: list[int] | None,
                 rank: int, alpha: float, dropout: float):
        if kind not in ROUTED_KINDS:
            raise ValueError(f"a routed adapter is one of {', '.join(ROUTED_KINDS)}, not {kind!r}")
        self.kind, self.model = kind, model
        router = getattr(model, _ROUTER, None)
        taken = set(router.names) if router is not None else set()
        self.name = next(f"route{n}" for n in range(len(taken) + 1) if f"route{n}" not in taken)
        self.router = Router.attach(model, self.name, peft_config(model, kind, targets, layers, rank, alpha, dropout))
        self.enabled = True
        self.engines: list[Engine] = []

    @property
    def targets(self) -> list[str]:
        return sorted(self.router.peft_model.peft_config[self.name].target_modules)

    def parameters(self) -> list[torch.nn.Parameter]:
        marker = f".{self.name}."
        return [p for n, p in self.model.named_parameters() if marker in n]

    def _route(self):
        return self.router.use(self.name if self.enabled else None)

    def follow(self, engine: Engine) -> None:
        """Let this engine's forwards (a policy's, a training step's) read this adapter."""
        if engine not in self.engines:
            self.engines.append(engine)
        engine.route = self._route

    def active(self):
        """Switched on for the block: training's forwards outside an engine (the locality term) read it too."""
        return self.router.use(self.name)

    def train_mode(self) -> None:
        for layer in self.model.modules():
            if isinstance(layer, LoraLayer) and self.name in layer.lora_dropout:
                layer.lora_dropout[self.name].train()

    def enable(self, flag: bool) -> None:
        self.enabled = flag

    def disabled(self):
        return self.router.use(None)

    def merge(self) -> None:
        raise ValueError("a routed adapter is read by its own policy alone; merging it would reach every policy")

    def unmerge(self) -> None:
        pass

    def remove(self) -> None:
        for engine in self.engines:
            if engine.route == self._route:
                engine.route = None
        self.router.remove(self.name)

    def save(self, folder: Path) -> Path:
        self.router.peft_model.save_pretrained(folder, selected_adapters=[self.name], safe_serialization=True,
                                               save_embedding_layers=False)
        return folder / self.name / "adapter_model.safetensors"
