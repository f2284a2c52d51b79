"""Benchmark of the weights strategy (ROME / MEMIT) on the default model.

Measures what DESIGN.md calls the edit metrics, on real environment texts:

- ``cartpole``: the two CartPole items (falling left -> left, falling right
  -> right) edited into the zero-shot policy: reliability on the items'
  examples, generalization to fresh observations of the same situations,
  locality (next-token KL and top-1 agreement on unrelated sentences and on
  the other CartPole situations), seconds, parameters touched, and the
  CartPole return of the edited policy;
- ``batch``: a 32-item MEMIT batch over Taxi-v4 situations (oracle-table
  actions), statistics cached beforehand: edit seconds, reliability,
  generalization, locality;
- ``runs``: the items that finished loop runs found (``--runs DIR ...``, each
  with its ``items.json`` and ``config.json``) edited into the run's base
  policy, every second example held out: reliability and generalization of
  the items as the loop found them, conflicts and all, and locality.

Usage: ``.venv/bin/python scripts/bench_memit.py [cartpole|batch|runs|all] [--method rome|memit]
[--set key=value ...] [--runs DIR ...] [--json]``. The machine is shared and noisy: repeat
timings (``--repeat``) and compare within one run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from llmrl.baselines import make_baseline
from llmrl.cards import Card, get_card
from llmrl.evaluate import evaluate
from llmrl.inject.weights import WeightsInjector
from llmrl.knowledge import KnowledgeItem, spread
from llmrl.metrics import locality_prompts
from llmrl.models import LoadedModel, load_model
from llmrl.oracle import TABLES
from llmrl.policy import LLMPolicy


def observations(card: Card, per_situation: int, seed: int, episodes: int = 300) -> dict[str, list[str]]:
    """Distinct observation texts per situation from seeded episodes of the oracle table with half the
    actions random, so that states the table reaches (a passenger on board) and others both occur."""
    env = card.make_env()
    rng = random.Random(seed)
    table = TABLES[card.key](card)
    found: dict[str, list[str]] = {}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            text, situation = card.text(obs, env)
            bucket = found.setdefault(situation, [])
            if text not in bucket and len(bucket) < per_situation:
                bucket.append(text)
            word = table[situation] if rng.random() < 0.5 else rng.choice(card.action_words)
            obs, _, terminated, truncated, _ = env.step(card.actions[word])
            done = terminated or truncated
    return found


def split_items(card: Card, situations: list[str], n_examples: int, n_fresh: int,
                seed: int) -> tuple[list[KnowledgeItem], dict[str, list[str]]]:
    """Items (oracle-table actions) with ``n_examples`` examples each, and fresh texts held out."""
    table = TABLES[card.key](card)
    texts = observations(card, n_examples + n_fresh, seed)
    items = [KnowledgeItem(s, table[s], value_gap=1.0, support=n_examples, examples=texts[s][:n_examples])
             for s in situations]
    return items, {s: texts[s][n_examples:] for s in situations}


def share_right(policy: LLMPolicy, texts: dict[str, list[str]], action: dict[str, str]) -> float:
    """Share of texts where the policy's greedy action is the wanted one."""
    hits = total = 0
    for situation, group in texts.items():
        if group:
            chosen = policy.scores(group).argmax(1)
            hits += int((chosen == policy.action_words.index(action[situation])).sum())
            total += len(group)
    return hits / max(total, 1)


@torch.no_grad()
def next_token_logp(lm: LoadedModel, prompts: list[str]) -> list[torch.Tensor]:
    """Log-distributions over the next token at every position of each prompt."""
    out = []
    for prompt in prompts:
        ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        out.append(torch.log_softmax(lm.model(input_ids=ids.to(lm.device)).logits[0].float(), -1).cpu())
    return out


def locality(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict[str, float]:
    """Mean KL(before || after) and top-1 agreement, at the last position and over all positions."""
    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p.exp() * (p - q)).sum(-1)
    last = torch.stack([kl(p[-1], q[-1]) for p, q in zip(before, after)])
    every = torch.cat([kl(p, q) for p, q in zip(before, after)])
    agree = torch.cat([(p.argmax(-1) == q.argmax(-1)).float() for p, q in zip(before, after)])
    agree_last = torch.tensor([float(p[-1].argmax() == q[-1].argmax()) for p, q in zip(before, after)])
    return {"kl_last": float(last.mean()), "kl_all": float(every.mean()), "kl_last_max": float(last.max()),
            "top1_last": float(agree_last.mean()), "top1_all": float(agree.mean())}


def measure(policy: LLMPolicy, injector: WeightsInjector, items: list[KnowledgeItem],
            fresh: dict[str, list[str]], others: list[str]) -> dict:
    """Inject, measure every edit metric, undo; checks that the undo is exact."""
    lm = policy.lm
    action = {item.situation: item.action for item in items}
    examples = {item.situation: item.examples for item in items}
    prompts = spread(locality_prompts("eval"), 40)  # held out from every training term
    env_prompts = [policy.decision_prompt(t) for t in others]
    base = next_token_logp(lm, prompts)
    base_env = next_token_logp(lm, env_prompts)
    before = {"reliability": share_right(policy, examples, action), "generalization": share_right(policy, fresh, action)}
    snapshot = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cpu, load = time.process_time(), os.getloadavg()[0]
    edit = injector.inject(policy, items)
    result = {
        "seconds": edit.seconds, "stats_seconds": edit.info["stats_seconds"], "edit_seconds": edit.info["edit_seconds"],
        "cpu_seconds": time.process_time() - cpu, "load_average": load,
        "stats_cached": edit.info["stats_cached"], "params_touched": edit.params_touched, "layers": edit.info["layers"],
        "before": before,
        "reliability": share_right(policy, examples, action),
        "generalization": share_right(policy, fresh, action),
        "locality": locality(base, next_token_logp(lm, prompts)),
        "locality_env": locality(base_env, next_token_logp(lm, env_prompts)) if others else None,
        "items": edit.info["items"],
    }
    edit.undo()
    result["undo_exact"] = all(torch.equal(p, snapshot[n]) for n, p in lm.model.named_parameters())
    return result, edit


def cartpole(lm: LoadedModel, injector: WeightsInjector, episodes: int) -> dict:
    card, _ = get_card("CartPole-v1")
    policy = make_baseline("zero-shot", card, lm)
    situations = ["the pole is falling to the left", "the pole is falling to the right"]
    items, fresh = split_items(card, situations, n_examples=50, n_fresh=50, seed=0)
    balanced = [t for s in card.situations if s not in situations for t in observations(card, 10, 7)[s]]
    result, _ = measure(policy, injector, items, fresh, balanced)
    edit = injector.inject(policy, items)
    ret = evaluate(policy, card, "weights", "x", episodes=episodes, seed=100, n_envs=8, progress=False)[0]
    edit.undo()
    zero = evaluate(policy, card, "zero-shot", "x", episodes=episodes, seed=100, n_envs=8, progress=False)[0]
    result["eval"] = {"edited_mean_return": ret.mean_return, "edited_returns": ret.returns,
                      "zero_shot_mean_return": zero.mean_return}
    return result


def taxi_items(n_items: int) -> tuple[list[KnowledgeItem], dict[str, list[str]]]:
    """Items for the Taxi situations with the most distinct texts (oracle-table actions).

    Taxi has 500 states, so rare situations have only a few distinct texts:
    half of each situation's texts (at most 8) are the examples, the rest fresh.
    """
    card, _ = get_card("Taxi-v4")
    table = TABLES[card.key](card)
    texts = observations(card, 16, 0, episodes=3000)
    situations = sorted(texts, key=lambda s: -len(texts[s]))[:n_items]
    items, fresh = [], {}
    for s in situations:
        k = min(8, (len(texts[s]) + 1) // 2)
        items.append(KnowledgeItem(s, table[s], value_gap=1.0, support=k, examples=texts[s][:k]))
        fresh[s] = texts[s][k:]
    return items, fresh


def batch(lm: LoadedModel, injector: WeightsInjector, n_items: int, repeat: int) -> dict:
    card, _ = get_card("Taxi-v4")
    policy = make_baseline("zero-shot", card, lm)
    items, fresh = taxi_items(n_items)
    injector.inject(policy, items).undo()  # fills the statistics cache; timings below are edits only
    runs = []
    for _ in range(repeat):
        result, _ = measure(policy, injector, items, fresh, [])
        runs.append(result)
    seconds = [r["seconds"] for r in runs]
    return {"n_items": len(items), "seconds": seconds, "median_seconds": statistics.median(seconds), **runs[-1]}


def finished_runs(lm: LoadedModel, injector: WeightsInjector, runs: list[Path]) -> dict:
    """Each run's items edited with ``injector`` into its base policy, alternate examples held out."""
    out = {}
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        card, _ = get_card(cfg["env"])
        policy = make_baseline(cfg["base_policy"], card, lm)
        found = [KnowledgeItem(**item) for item in json.loads((run / "items.json").read_text())["items"]]
        items = [KnowledgeItem(**{**item.to_json(), "examples": item.examples[::2]}) for item in found]
        fresh = {item.situation: item.examples[1::2] for item in found}
        result, _ = measure(policy, injector, items, fresh, [])
        out[run.name] = {"env": cfg["env"], "items": len(items), "before": result["before"],
                         "reliability": result["reliability"], "generalization": result["generalization"],
                         "kl_last": result["locality"]["kl_last"], "top1_last": result["locality"]["top1_last"],
                         "edit_seconds": result["edit_seconds"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["cartpole", "batch", "runs", "all"], nargs="?", default="all")
    parser.add_argument("--runs", nargs="+", type=Path, default=[], help="finished loop run folders (part runs)")
    parser.add_argument("--method", default="memit", choices=["rome", "memit"])
    parser.add_argument("--set", action="append", default=[], help="injector option key=value (Python literal)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); on a shared, loaded CPU 1 is often much faster")
    parser.add_argument("--dtype", default="float32", help="model dtype (the experiment configs use bfloat16)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        options[key] = ast.literal_eval(value)
    injector = WeightsInjector(method=args.method, **options)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model(None, device="cpu", dtype=args.dtype)
    t0 = time.perf_counter()
    out = {"method": args.method, "options": {k: repr(v) for k, v in options.items()},
           "threads": torch.get_num_threads()}
    if args.part in ("cartpole", "all"):
        out["cartpole"] = cartpole(lm, injector, args.episodes)
    if args.part in ("batch", "all"):
        out["batch"] = batch(lm, injector, args.items, args.repeat)
    if args.part in ("runs", "all") and args.runs:
        out["runs"] = finished_runs(lm, injector, args.runs)
    out["wall_seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=None if args.json else 2, default=float))


if __name__ == "__main__":
    main()
