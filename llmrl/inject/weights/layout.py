"""Where a model keeps its blocks and the MLP down projections that the weights strategy edits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmrl.errors import UsageError

#: Default layers as fractions of depth (0 = first block, 1 = last): for the 30-block default
#: model MEMIT edits blocks 9, 10, 12, 13 and 14 (rounding skips 11) and ROME block 12. On 32
#: Taxi items MEMIT at 0.3-0.5 beat 0.1-0.3 and 0.4-0.6 in reliability and locality
#: (scripts/bench_memit.py); for GPT-2 XL this lands near MEMIT's 13-17 and ROME's 17 of 48. FT-L
#: fine-tunes ROME's layer, as ROME's comparison does.
DEFAULT_LAYERS = {"rome": (0.4,), "memit": (0.3, 0.35, 0.4, 0.45, 0.5), "ft-l": (0.4,)}


@dataclass(frozen=True)
class Layout:
    """Where a model keeps its blocks and their MLP down projections (the edited weights)."""

    blocks: list[nn.Module]
    projections: list[nn.Module]
    #: GPT-2's ``Conv1D`` stores the projection as [intermediate, hidden], the transpose of ``nn.Linear``.
    transposed: bool

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream (the projection's output)."""
        return self.projections[0].weight.shape[1 if self.transposed else 0]

    @property
    def key_size(self) -> int:
        """Width of the keys (the projection's input)."""
        return self.projections[0].weight.shape[0 if self.transposed else 1]

    def add(self, layer: int, delta: torch.Tensor) -> None:
        """Add ``delta`` ([hidden, intermediate], the ``nn.Linear`` orientation) to one projection."""
        weight = self.projections[layer].weight
        with torch.no_grad():
            weight.add_((delta.T if self.transposed else delta).to(weight))


def find_layout(model: nn.Module) -> Layout:
    """Llama layout (``model.layers[i].mlp.down_proj``) or GPT-2 layout (``transformer.h[i].mlp.c_proj``)."""
    for outer, inner, proj, kind, transposed in (("model", "layers", "down_proj", nn.Linear, False),
                                                 ("transformer", "h", "c_proj", Conv1D, True)):
        blocks = getattr(getattr(model, outer, None), inner, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and all(
                isinstance(getattr(getattr(b, "mlp", None), proj, None), kind) for b in blocks):
            return Layout(list(blocks), [getattr(b.mlp, proj) for b in blocks], transposed)
    raise UsageError(f"the weights strategy edits Llama-style (model.layers[i].mlp.down_proj) or GPT-2-style "
                     f"(transformer.h[i].mlp.c_proj) models; {type(model).__name__} is neither")


def resolve_layers(spec: Sequence[int | float] | None, depth: int, method: str) -> list[int]:
    """Layer indices from ints (negative counts from the end) or floats (fractions of depth)."""
    chosen = []
    for entry in DEFAULT_LAYERS[method] if spec is None else spec:
        if isinstance(entry, float):
            if not 0.0 <= entry <= 1.0:
                raise UsageError(f"layer fraction {entry} is outside [0, 1]")
            index = round(entry * (depth - 1))
        else:
            index = entry + depth if entry < 0 else entry
        if not 0 <= index < depth:
            raise UsageError(f"layer {entry} does not exist in a {depth}-layer model")
        chosen.append(index)
    layers = sorted(set(chosen))
    if not layers:
        raise UsageError("no layers to edit")
    if layers[-1] == depth - 1 and method != "ft-l":
        raise UsageError(f"layer {layers[-1]} is the last block; the value vector needs a block after it "
                         "to reach the answer")
    if method in ("rome", "ft-l") and len(layers) != 1:
        raise UsageError(f"{method} edits exactly one layer, got {layers}")
    return layers
