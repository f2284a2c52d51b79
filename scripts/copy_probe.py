"""How often the default model copies an answer it was just shown: the reason ``rag`` fills its k cases.

For pool items drawn as the capacity benchmark draws them, each item's first
example is shown after ``r`` identical finished exchanges (the same observation
answered with the item's action), r = 0 .. ``--most``; the output is, per r,
the share of items on which the policy then chooses the item's action.

Usage: ``.venv/bin/python scripts/copy_probe.py [--items 60] [--most 4] [--seed 0] [--pool reports/edits/pool.json]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from llmrl.capacity.pool import load_pool
from llmrl.cards import get_card
from llmrl.models import load_model
from llmrl.policy import LLMPolicy
from llmrl.prompts import card_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--most", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=Path, default=Path("reports/edits/pool.json"))
    args = parser.parse_args()
    # the benchmark's draw of 100 items, whose first ``--items`` are probed
    items = random.Random(args.seed).sample(load_pool(args.pool), max(100, args.items))[: args.items]
    lm = load_model(None, "auto", "auto")
    policies: dict[str, LLMPolicy] = {}
    hits = [0] * (args.most + 1)
    for p in items:
        if p.card not in policies:
            policies[p.card] = LLMPolicy(lm, card_prompt(get_card(p.card)[0]))
        policy = policies[p.card]
        text = p.item.examples[0]
        turn = policy.rendered.turn(text, p.item.action)
        scores = policy.scores([turn * r + text for r in range(args.most + 1)])
        for r, row in enumerate(scores):
            hits[r] += policy.action_words[int(row.argmax())] == p.item.action
    print(json.dumps({"items": len(items), "copied": {r: h / len(items) for r, h in enumerate(hits)}}))


if __name__ == "__main__":
    main()
