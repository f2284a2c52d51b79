"""The ``weights`` strategy (mastery phase): closed-form edits of MLP weights (ROME, MEMIT), exactly undoable.

A knowledge item "in situation S, action A is better" is written into the MLP
down projections the way ROME (Meng et al., 2022) and MEMIT (Meng et al.,
2023) write facts:

- the **key** is the down projection's input at the last token of the
  subject (the situation phrase inside the decision prompt), averaged over the
  item's example observations, which differ in the numbers before the phrase;
- the **value** is a vector added to the residual stream there, found by a few
  Adam steps that make the action word likely after the prompt, with a KL term
  on a neutral sentence about the situation (ROME's "essence" prompt) and a
  norm limit;
- the **update** is closed form and weighted by the key second moments
  C = E[k kᵀ], so that other keys keep their values: ROME a rank-one change of
  one layer, one item at a time; MEMIT a least-squares change of a batch of
  items spread over a range of layers.

C comes from a small local corpus (text the model samples itself from a few
generic seed prompts, plus the environment's own prompts), in one bounded pass
cached as safetensors per model and layer: no dataset download, no 40-hour
statistics run.

On a CPU speed comes from splitting every prompt at the subject. The part
before it does not depend on the value vector, so its KV cache is computed once
(the shared system prompt once for all rows) and each optimisation step runs
only the few tokens from the subject to the answer.

The package: :mod:`.layout` (where a model keeps the edited weights),
:mod:`.prompts` (decision prompts split at the subject), :mod:`.forwards`
(cached forward passes and the hooks that read keys and shift residuals),
:mod:`.statistics` (the key second moments and their corpus) and
:mod:`.injector` (the value optimisation and the ROME and MEMIT updates).
"""

from llmrl.inject.weights.injector import METHODS, MOM2_WEIGHT_PER_ITEM, WeightsInjector
from llmrl.inject.weights.layout import DEFAULT_LAYERS, Layout, find_layout, resolve_layers

__all__ = ["DEFAULT_LAYERS", "METHODS", "MOM2_WEIGHT_PER_ITEM", "Layout", "WeightsInjector", "find_layout",
           "resolve_layers"]
