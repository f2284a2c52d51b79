"""What an adapter adds, one class per family: peft's LoRA and IA3 layers, BitFit's biases, a prefix.

A tuner attaches to the policy's own model in place and gives the injector
and its handle what they need: the trainable parameters, switching the effect
off and on, a pass without it (the locality term's reference), an exact merge
into the weights and back, removal, and saving as safetensors. Merging keeps a
copy of every weight it changes and unmerging writes that copy back, so the
base weights return bit-exactly (peft would subtract, which rounds).
"""

from __future__ import annotations

import re
import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from llmrl.engine import Batch, Engine

#: The adapter families: reparameterised (LoRA), additive (IA3, prefix) and specification (BitFit) PET.
KINDS = ("lora", "ia3", "bitfit", "prefix")
#: Marks a model that carries a BitFit or prefix tuner (peft marks its own layers).
_MARK = "_llmrl_tuner"
#: Where a layer index sits in a module's name: ``model.layers.3.mlp`` or ``transformer.h.3.mlp``.
_LAYER = re.compile(r"\.(\d+)\.")


def carries_adapter(model: torch.nn.Module) -> bool:
    return getattr(model, _MARK, None) is not None or any(isinstance(m, BaseTunerLayer)
                                                               for m in model.modules())


def module_names(model: torch.nn.Module, targets: list[str], layers: list[int] | None) -> list[str]:
    """Full names of the modules whose name ends with a target, in ``layers`` (None: all)."""
    out = []
    for name, _ in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        match = _LAYER.search(name)
        if layers is None or (match is not None and int(match.group(1)) in layers):
            out.append(name)
    return out


def _weight(module: torch.nn.Module) -> torch.Tensor:
    return module.get_base_layer().weight if isinstance(module, BaseTunerLayer) else module.weight


def peft_config(model: torch.nn.Module, kind: str, targets: list[str], layers: list[int] | None,
                rank: int, alpha: float, dropout: float) -> LoraConfig | IA3Config:
    """peft's configuration of a LoRA or IA3 adapter on the target modules."""
    conv1d = any(isinstance(m, Conv1D) for n, m in model.named_modules() if any(n.endswith(t) for t in targets))
    if kind == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                          layers_to_transform=layers, fan_in_fan_out=conv1d, bias="none")
    # IA3 scales the input of the feed-forward output projection, the output of the others
    names = module_names(model, targets, layers)
    down = [n for n in names if n.endswith(targets[-1])]
    return IA3Config(target_modules=names, feedforward_modules=down, fan_in_fan_out=conv1d)


class PeftTuner:
    """LoRA (Hu et al., ICLR 2022) or IA3 (Liu et al., NeurIPS 2022) layers, made and removed by peft."""

    def __init__(self, model: torch.nn.Module, kind: str, targets: list[str], layers: list[int] | None,
                 rank: int, alpha: float, dropout: float):
        config = peft_config(model, kind, targets, layers, rank, alpha, dropout)
        self.kind, self.model = kind, model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations that peft still calls
            self.peft_model = get_peft_model(model, config)
        self._backup: dict[BaseTunerLayer, torch.Tensor] = {}

    @property
    def targets(self) -> list[str]:
        return sorted(self.peft_model.peft_config["default"].target_modules)

    @property
    def merged(self) -> bool:
        return bool(self._backup)

    def parameters(self) -> list[torch.nn.Parameter]:
        marker = f"{self.kind}_"
        return [p for n, p in self.model.named_parameters() if marker in n]

    def follow(self, engine: Engine) -> None:
        """Nothing to do: peft's layers sit in the model every engine runs."""

    def active(self) -> AbstractContextManager:
        """Nothing to switch: the adapter is on wherever it is enabled."""
        return nullcontext()

    def train_mode(self) -> None:
        """The adapter's own dropout on (the base model stays in eval mode)."""
        for layer in self.model.modules():
            if isinstance(layer, LoraLayer):
                layer.lora_dropout.train()

    def enable(self, flag: bool) -> None:
        base = self.peft_model.base_model
        base.enable_adapter_layers() if flag else base.disable_adapter_layers()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        with self.peft_model.disable_adapter():
            yield

    def merge(self) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        self._backup = {layer: _weight(layer).detach().clone() for layer in layers}
        self.peft_model.merge_adapter()

    def unmerge(self) -> None:
        with torch.no_grad():
            for layer, weight in self._backup.items():
                _weight(layer).copy_(weight)
                layer.merged_adapters = []
        self._backup = {}

    def remove(self) -> None:
        self.unmerge()
        self.peft_model.unload()

    def save(self, folder: Path) -> Path:
        self.peft_model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
        return folder / "adapter_model.safetensors"


class BiasTuner:
    """BitFit (Ben Zaken et al., ACL 2022): a trained change of the target layers' biases, nothing else.

    A layer without a bias (Llama's) gets the one it lacks, zero at first. The
    changes are float32 parameters added to the layers' outputs by forward hooks;
    a merge writes them into the biases (creating them where missing).
    """

    kind = "bitfit"

    def __init__(self, model: torch.nn.Module, targets: list[str], layers: list[int] | None):
        self.model = model
        modules = dict(model.named_modules())
        self.names = module_names(model, targets, layers)
        if not self.names:
            raise ValueError(f"no modules named {targets} to give biases to")
        self.biases: dict[str, torch.nn.Parameter] = {}
        for name in self.names:
            weight = modules[name].weight
            width = weight.shape[1] if isinstance(modules[name], Conv1D) else weight.shape[0]
            self.biases[name] = torch.nn.Parameter(torch.zeros(width, dtype=torch.float32, device=weight.device))
        for p in model.parameters():  # the caller keeps the grad flags and restores them on removal
            p.requires_grad_(False)
        self.enabled, self._merged = True, {}  # name -> the bias before the merge (None: there was none)
        self._hooks = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        setattr(model, _MARK, self)

    def _hook(self, name: str):
        def add(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not self.enabled or self._merged:
                return output
            return output + self.biases[name].to(output.dtype)
        return add

    @property
    def targets(self) -> list[str]:
        return list(self.names)

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.biases.values())

    def follow(self, engine: Engine) -> None:
        """Nothing to do: the hooks sit in the model every engine runs."""

    def active(self) -> AbstractContextManager:
        return nullcontext()

    def train_mode(self) -> None:
        pass

    def enable(self, flag: bool) -> None:
        self.enabled = flag

    @contextmanager
    def disabled(self) -> Iterator[None]:
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def merge(self) -> None:
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name, delta in self.biases.items():
                module = modules[name]
                if module.bias is None:
                    self._merged[name] = None
                    module.bias = torch.nn.Parameter(delta.detach().to(module.weight.dtype), requires_grad=False)
                else:
                    self._merged[name] = module.bias.detach().clone()
                    module.bias.add_(delta.detach().to(module.bias.dtype))

    def unmerge(self) -> None:
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name, before in self._merged.items():
                if before is None:
                    modules[name].bias = None
                else:
                    modules[name].bias.copy_(before)
        self._merged = {}

    def remove(self) -> None:
        self.unmerge()
        for hook in self._hooks:
            hook.remove()
        delattr(self.model, _MARK)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "adapter_model.safetensors"
        save_file({name: p.detach().contiguous() for name, p in self.biases.items()}, str(path))
        return path


class PrefixTuner:
    """Prefix tuning (Li & Liang, ACL 2021): ``tokens`` virtual tokens' keys and values in every layer, trained.

    Every forward an engine starts from nothing continues from them (:attr:`Engine.start`), so the
    policies' prompts, and nothing else, read them: the model's weights and its answers to any other
    prompt stay as they were. The virtual tokens take no positions (the prompt still starts at 0) and
    start as the keys and values of the prompt's first ``tokens`` tokens.
    """

    kind = "prefix"
    merged = False

    def __init__(self, model: torch.nn.Module, engines: list[Engine], init: list[int], tokens: int):
        if len(init) < tokens:
            raise ValueError(f"the prompt has {len(init)} tokens, fewer than the {tokens} virtual tokens")
        self.model, self.engines = model, list(dict.fromkeys(engines))
        for p in model.parameters():  # the caller keeps the grad flags and restores them on removal
            p.requires_grad_(False)
        with torch.no_grad():
            _, real = Engine(model, 0).run(None, [init[:tokens]])
        self.kv = [(torch.nn.Parameter(k.detach().clone()), torch.nn.Parameter(v.detach().clone()))
                   for k, v in real.kv]
        self.enabled = True
        setattr(model, _MARK, self)
        self._point()

    @property
    def targets(self) -> list[str]:
        return [f"{self.kv[0][0].shape[2]} virtual tokens in {len(self.kv)} layers"]

    def _virtual(self) -> Batch:
        """The parameters themselves as a one-row batch: an optimiser step changes what every run reads."""
        return Batch(tuple((k, v) for k, v in self.kv), torch.ones(1, self.kv[0][0].shape[2], dtype=torch.long),
                     torch.zeros(1, dtype=torch.long))

    def _point(self) -> None:
        start = self._virtual() if self.enabled else None
        for engine in self.engines:
            engine.start = start

    def follow(self, engine: Engine) -> None:
        """Let one more engine (a policy's, a training step's) read the prefix."""
        if engine not in self.engines:
            self.engines.append(engine)
        self._point()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [t for pair in self.kv for t in pair]

    def active(self) -> AbstractContextManager:
        return nullcontext()

    def train_mode(self) -> None:
        pass

    def enable(self, flag: bool) -> None:
        self.enabled = flag
        self._point()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        was, self.enabled = self.enabled, False
        self._point()
        try:
            yield
        finally:
            self.enabled = was
            self._point()

    def merge(self) -> None:
        raise ValueError("a prefix adds no weights to merge into")

    def unmerge(self) -> None:
        pass

    def remove(self) -> None:
        for engine in self.engines:
            engine.start = None
        delattr(self.model, _MARK)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "adapter_model.safetensors"
        tensors = {f"layer{i}.{name}": t.detach().contiguous() for i, pair in enumerate(self.kv)
                   for name, t in zip(("keys", "values"), pair)}
        save_file(tensors, str(path))
        return path


#: Any of the adapter families.
Tuner = PeftTuner | BiasTuner | PrefixTuner
