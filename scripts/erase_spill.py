"""Where an erased item's examples go: back to the untouched model, or to the items left on its card.

The capacity benchmark's first erase (one item of N) can miss ``erase_ok`` for methods whose edits reach
past their own keys. For a (method, N, seed) cell this draws the same items and erased item as
``llmrl bench edits``, and prints for each erased example the choice of the untouched model, after the
insert, after the erase, and with only the erased item's card-mates inserted on the untouched model. When
"after the erase" equals "card-mates alone" and not "untouched", the miss is the items left acting on
the erased item's observations (locality within a card), not a trace of the erased item.

Usage: ``.venv/bin/python scripts/erase_spill.py --method memit [--items 10] [--seed 1]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from llmrl.capacity.bench import _Bench
from llmrl.capacity.pool import load_pool
from llmrl.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool", type=Path, default=Path("reports/edits/pool.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)  # the benchmark's draws: the items, then the one erased
    items = rng.sample(load_pool(args.pool), args.items)
    gone = rng.sample(items, 1)
    lm = load_model(None, "auto", "auto")
    bench = _Bench(lm, items, args.method, False, {})
    untouched = bench.untouched_batch(gone)
    bench.insert()
    inserted = bench.chosen(bench.examples(gone), cached=False)
    bench.erase(gone)
    erased = bench.chosen(bench.examples(gone), cached=False)
    bench.learner.undo_to(0)
    mates = [p for p in items if p not in gone and p.card == gone[0].card]
    alone = None
    if mates:
        only = _Bench(lm, mates, args.method, False, {})
        only.insert()
        alone = only.chosen(bench.examples(gone), cached=False)
        only.learner.undo_to(0)
    print(json.dumps({"method": args.method, "items": args.items, "seed": args.seed, "card": gone[0].card,
                      "item_action": gone[0].item.action, "untouched": untouched, "inserted": inserted,
                      "erased": erased, "card_mates_alone": alone,
                      "card_mates": [p.item.action for p in mates]}))


if __name__ == "__main__":
    main()
