"""Adapter strategy (association phase): knowledge as a LoRA adapter trained on the items' observations.

Like LoRA-based editors (T-Patcher, MELO), the base weights stay as they are:
peft wraps the MLP layers of ``policy.lm.model`` in place, so the very model
object the policy calls gains a low-rank branch that can be switched off,
merged into the weights, saved and removed.

The adapter is trained on ``policy.decision_prompt(text)`` for every example
text of every item, items taken in turn so each counts the same whatever its
number of examples. The loss has three terms:

- on the action tokens, one of two objectives. ``choice`` (default) is the
  cross-entropy over the action words, each scored exactly as the policy
  scores it, so only the *relative* preference among the actions is trained.
  ``lm`` is the plain cross-entropy of the item's action tokens, which must
  also lift the action word's absolute probability: on SmolLM2-135M that
  starts near 0.003, and lifting it teaches "answer with an action word" to
  every chat prompt (next-token KL on other environments' decision prompts:
  9 nats, against 0.04 for ``choice``);
- ``answer_weight`` times the KL(frozen || adapted) of the next-token
  distribution where the answer starts, on the training prompts themselves,
  with the action words' first tokens merged into one outcome: the choice
  among the actions is free to move, the rest of the distribution (how likely
  an action word is at all, what else the model would say) is held;
- ``locality_weight`` times the next-token KL(frozen || adapted) at every
  position of unrelated prompts, taken as plain text and, with a chat
  template, as a user turn awaiting the answer, where the policy reads. The
  frozen reference is the same model with the adapter switched off.

Speed: every decision prompt starts with the policy's prefix (chat template
and instructions), so each step runs it once, with gradients, and repeats its
KV cache over the batch; only the answer positions get logits. Training stops
once every row of a step's batch has an action loss below ``stop_loss``.

Life cycle: ``inject`` returns an :class:`~llmrl.inject.Edit` whose
``info["adapter"]`` is an :class:`AdapterHandle` (switch on/off, merge).
``undo`` removes the adapter and leaves the model bit-exactly as it was, even
after a merge: ``merge`` keeps a copy of every weight it changes and removal
writes that copy back, rather than subtracting the low-rank product (which
rounds). One adapter per model: ``inject`` refuses a model that carries
another's peft layers. On a model that carries this injector's own live
adapter, it trains that adapter further (sequential editing), holding the
earlier items' choices with ``keep_weight``; undo restores the adapter's weights.
With ``routed`` (LoRA, IA3), each policy on the model gets an adapter of its own
that only its own forwards read (:mod:`.routed`).

The package: :mod:`.objective` (the items as token ids, the batches and the
loss terms), :mod:`.tuners` (each adapter family), :mod:`.routed` (adapters
per policy) and :mod:`.injector` (the live adapter and its training).
"""

from llmrl.inject.adapter.injector import LAYOUTS, OBJECTIVES, AdapterHandle, AdapterInjector, default_target_modules
from llmrl.inject.adapter.objective import Encoded, action_logprobs, balanced_batches, encode, lump_actions

__all__ = ["LAYOUTS", "OBJECTIVES", "AdapterHandle", "AdapterInjector", "Encoded", "action_logprobs",
           "balanced_batches", "default_target_modules", "encode", "lump_actions"]
