"""How many of a card's items the context rules keep within their token budget.

The `context` method writes each card's items as rules with demonstrations, strongest evidence first,
and stops at ``max_tokens`` (llmrl.inject.context.select). At N = 1,000 the capacity grid's rules hold
about a third of the items' examples; this counts, per card of the pool, how many items reach the
prompt at all. Only the tokenizer and the cards' prompts matter, so the tiny model (same tokenizer as
the default) stands in for it.

Usage: ``.venv/bin/python scripts/context_budget.py [--pool reports/edits/pool.json] [--max-tokens 1024]``
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from llmrl.capacity.bench import _Bench
from llmrl.capacity.pool import load_pool
from llmrl.inject.context import select
from llmrl.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path("reports/edits/pool.json"))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--demos", type=int, default=1)
    args = parser.parse_args()
    pool = load_pool(args.pool)
    run = _Bench(load_model("tiny", "cpu", "float32"), pool, "context", sequential=False, options={})
    by_card = defaultdict(list)
    for entry in pool:
        by_card[entry.card].append(entry.item)
    total = 0
    for card, items in sorted(by_card.items()):
        kept, _, _, used = select(run.tasks[card][0], items, args.demos, args.max_tokens)
        total += len(kept)
        print(f"{card}: {len(kept)} of {len(items)} items ({used} tokens)")
    print(f"all cards: {total} of {len(pool)} items reach the prompt")


if __name__ == "__main__":
    main()
