"""Does a sequential MEMIT edit undo an earlier one? The flip stream's case, on the default model.

The flip stream's learner revises CartPole's two items one at a time: first "the pole is falling to
the left → right", later "… to the right → left", each a new edit on top of the earlier ones
(``accumulate: sequential``). This script makes those edits directly and measures, on fresh start
observations of each situation (not the items' examples), how often the policy chooses the mirrored
action:

- ``one edit``: both mirrored items in one edit on top of the original edit;
- ``one item per edit``: left, then right, each its own edit, as the stream makes them; then back to
  the original actions, again one item per edit, as the stream's third stage makes them.

It does both with plain MEMIT and with ``null_space: true`` (AlphaEdit's update, fitted to keep the
values of the earlier edits' keys), and writes the figures to
``reports/continual/flip/sequential-memit.json``.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python scripts/sequential_memit_flip.py`` (about 3 minutes on a 2-core CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.inject.weights import WeightsInjector
from llmrl.knowledge import KnowledgeItem
from llmrl.metrics import reliability
from llmrl.models import load_model

OUT = Path(__file__).resolve().parent.parent / "reports" / "continual" / "flip" / "sequential-memit.json"
LEFT, RIGHT = "the pole is falling to the left", "the pole is falling to the right"
EXAMPLES, SEEDS = 16, 200  # the items' examples are the first 16 start texts; the rest are fresh


def start_texts(seeds: int) -> dict[str, list[str]]:
    """CartPole's first observation text for seeds 0..seeds-1, by situation."""
    card, _ = get_card("CartPole-v1")
    env = card.make_env()
    out: dict[str, list[str]] = {}
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        text, situation = card.text(obs, env)
        out.setdefault(situation, []).append(text)
    return out


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model(None, "cpu", "auto")
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, lm)
    texts = start_texts(SEEDS)

    def item(situation: str, action: str, fresh: bool = False) -> KnowledgeItem:
        examples = texts[situation][EXAMPLES:] if fresh else texts[situation][:EXAMPLES]
        return KnowledgeItem(situation, action, 1.0, 20, examples=examples)

    def mirrored_on_fresh() -> dict[str, float]:
        return {s: reliability(policy, [item(s, a, fresh=True)]) for s, a in ((LEFT, "right"), (RIGHT, "left"))}

    results = []
    for null_space in (False, True):
        injector = WeightsInjector(null_space=null_space)
        for schedule in ("one edit", "one item per edit"):
            edits = [injector.inject(policy, [item(LEFT, "left"), item(RIGHT, "right")])]
            original = reliability(policy, [item(LEFT, "left", True), item(RIGHT, "right", True)])
            if schedule == "one edit":
                edits.append(injector.inject(policy, [item(LEFT, "right"), item(RIGHT, "left")]))
                between = None
            else:
                edits.append(injector.inject(policy, [item(LEFT, "right")]))
                between = mirrored_on_fresh()[LEFT]
                edits.append(injector.inject(policy, [item(RIGHT, "left")]))
            mirrored = mirrored_on_fresh()
            back = None
            if schedule == "one item per edit":  # and back to the original, one item per edit, as stage 3
                original_items = ((LEFT, "left"), (RIGHT, "right"))
                edits += [injector.inject(policy, [item(s, a)]) for s, a in original_items]
                back = {s: reliability(policy, [item(s, a, fresh=True)]) for s, a in original_items}
            row = {"null_space": null_space, "schedule": schedule, "original_after_first_edit": original,
                   "left_mirrored_before_right_edit": between, "mirrored_at_the_end": mirrored,
                   "original_after_editing_back": back,
                   "fresh_observations": {s: len(texts[s]) - EXAMPLES for s in (LEFT, RIGHT)}}
            print(json.dumps(row))
            results.append(row)
            for edit in reversed(edits):
                edit.undo()
    OUT.write_text(json.dumps({"model": lm.name, "runtime": lm.runtime, "results": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
