"""The main job for `make demo`: every baseline policy on CartPole-v1, a table and a report.

Usage: python scripts/demo.py [--env CartPole-v1] [--episodes 10] [--seeds 3] [--out results/demo]

The knowledge-injection strategies (context, adapter, weights) and PPO join
this comparison as the editing loop and the ablation land; until then the
demo compares the prompt-engineering baselines against random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from llmrl.baselines import BASELINES, make_baseline
from llmrl.cards import get_card
from llmrl.cli import _quiet_libraries
from llmrl.evaluate import evaluate
from llmrl.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results/demo"))
    args = ap.parse_args()
    _quiet_libraries()
    card, variant = get_card(args.env)
    lm = load_model()
    rows = []
    for name in BASELINES:
        returns, rates, t0 = [], [], time.perf_counter()
        for seed in range(args.seeds):
            policy = make_baseline(name, card, None if name == "random" else lm, seed=seed)
            result, _ = evaluate(policy, card, name, lm.name, args.episodes, seed=1000 * seed, n_envs=8,
                                 variant=variant, progress=sys.stderr.isatty())
            returns += result.returns
            rates.append(result.summary()["decisions_per_s"])
        rows.append({"policy": name, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                     "episodes": len(returns), "decisions_per_s": float(np.mean(rates)),
                     "wall_seconds": time.perf_counter() - t0})
    table = Table(title=f"{card.key}: {args.seeds} seeds x {args.episodes} episodes, model {lm.name}")
    for col in ("policy", "return (mean ± std)", "episodes", "decisions/s", "wall s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(r["policy"], f"{r['mean_return']:.1f} ± {r['std_return']:.1f}", str(r["episodes"]),
                      f"{r['decisions_per_s']:.1f}", f"{r['wall_seconds']:.1f}")
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = [f"# {card.key} baselines", "", f"Model {lm.name}; {args.seeds} seeds x {args.episodes} episodes.", "",
             "| policy | return (mean ± std) | episodes | decisions/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['policy']} | {r['mean_return']:.1f} ± {r['std_return']:.1f} | {r['episodes']} | "
              f"{r['decisions_per_s']:.1f} |" for r in rows]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
