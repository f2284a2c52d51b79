"""Which of a finished stream's items its edits hold: make the edits again, in order, and score the examples.

A stream's stage lines give returns, not whether each edit took. For a sequential stream without erases
this reads the run's ``config.json`` and ``items.json``, builds the stream's policies on its model,
device and dtype, and makes again, in iteration order, one edit per (iteration, card) with the items that
iteration wrote (as the stream's learner did; a retained item is edited too). After each edit it prints,
per item held so far, the share of its examples on which its card's policy chooses its action.
``--set KEY=VALUE`` overrides an injector option (``--set null_space=false``: MEMIT where the stream ran
AlphaEdit), so two methods can be compared on the same items in the same order.

Usage: ``.venv/bin/python scripts/stream_items_probe.py RUN_FOLDER [--until ITERATION] [--set KEY=VALUE]``
(one JSON line per edit; ``reports/continual/control-alphaedit/acrobot_probe.jsonl`` holds four such runs)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from itertools import groupby
from pathlib import Path

import yaml

from llmrl.cards import get_card
from llmrl.continual.agents import EditingAgent
from llmrl.continual.stream import StreamConfig
from llmrl.knowledge import KnowledgeItem
from llmrl.learner import make_injector
from llmrl.metrics import reliability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--until", type=int, default=None, help="the last iteration whose edit is made")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = StreamConfig.model_validate(json.loads((args.run / "config.json").read_text()))
    saved = json.loads((args.run / "items.json").read_text())
    if cfg.accumulate != "sequential" or saved["erased"]:
        raise SystemExit("the probe makes the edits of a sequential stream without erases only")
    options = dict(cfg.strategy_options)
    for pair in args.set:
        key, _, value = pair.partition("=")
        options[key] = yaml.safe_load(value)
    cards = [get_card(s.env)[0] for s in cfg.stages]
    with tempfile.TemporaryDirectory() as out:
        agent = EditingAgent([cfg.stage_config(s) for s in cfg.stages], cards,
                             make_injector(cfg.strategy, options), cfg.accumulate, Path(out))
        items = sorted(((i.pop("card"), KnowledgeItem(**i)) for i in saved["items"]),
                       key=lambda pair: pair[1].iteration)
        held: list[tuple[str, KnowledgeItem]] = []
        for (it, card), group in groupby(items, key=lambda pair: (pair[1].iteration, pair[0])):
            if args.until is not None and it > args.until:
                break
            written = [item for _, item in group]
            agent.tasks[card][1].items.update({i.situation: i for i in written})
            agent.learner.apply(card, {"insert": written, "modify": [], "retain": [], "erase": []})
            held += [(card, i) for i in written]
            print(json.dumps({"run": str(args.run), "set": args.set, "iteration": it, "card": card,
                              "held": [_held(agent, c, i) for c, i in held]}), flush=True)


def _held(agent: EditingAgent, card: str, item: KnowledgeItem) -> dict:
    return {"card": card, "situation": item.situation, "action": item.action, "iteration": item.iteration,
            "reliability": round(reliability(agent.tasks[card][0], [item]), 3)}


if __name__ == "__main__":
    main()
