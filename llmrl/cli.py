"""The ``llmrl`` command: ``model fetch|info``, ``eval``, ``run``, ``ablate``, ``report``, ``envs``, ``bench``.

Bad input of any kind ends in one ``llmrl: error: ...`` line and exit code 2;
with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrl.errors import UsageError

if TYPE_CHECKING:
    from llmrl.config import EvalConfig
    from llmrl.policy import LLMPolicy
    from llmrl.record import RunRecord

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on a single line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # main() prefixes "llmrl: error:", so only a subcommand names itself
        raise UsageError(message if self.prog == "llmrl" else f"{self.prog}: {message}")


def _quiet_libraries() -> None:
    """Keep stdout for results: silence transformers' progress bars and advice."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="hub id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", help="auto (default: bf16 on a CPU with native bf16 and for models of 1B+ "
                                   "parameters on a GPU, else fp32), float32, bfloat16, float16")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    model = sub.add_parser("model", help="fetch or describe a model")
    msub = model.add_subparsers(dest="action", required=True, parser_class=_Parser)
    fetch = msub.add_parser("fetch", help="download and cache the default model")
    fetch.add_argument("--force", action="store_true", help="fetch again even if cached")
    info = msub.add_parser("info", help="load a model and describe it")
    _add_model_options(info)
    info.add_argument("--json", action="store_true")

    ev = sub.add_parser("eval", help="evaluate a policy on an environment")
    ev.add_argument("--config", type=Path, help="YAML file with any of these options; flags override it")
    ev.add_argument("--env", help="card name, optionally ENV:VARIANT (see `llmrl envs`)")
    ev.add_argument("--policy", help="random, zero-shot, few-shot, chain-of-thought, expert-hint")
    ev.add_argument("--run", type=Path, help="a finished `llmrl run` folder (or an ablation's run folder): "
                                             "evaluate its final edited policy, by default as the run did")
    _add_model_options(ev)
    ev.add_argument("--variant", help="play this variant of the card (see `llmrl envs`)")
    ev.add_argument("--episodes", type=int)
    ev.add_argument("--seed", type=int)
    ev.add_argument("--max-steps", type=int, dest="max_steps")
    ev.add_argument("--n-envs", type=int, dest="n_envs")
    ev.add_argument("--threads", type=int, help="torch threads (default: torch's; with --run, the run's)")
    ev.add_argument("--mode", help="score (default) or generate")
    ev.add_argument("--normalization", help="word (default), token or sum")
    ev.add_argument("--temperature", type=float, help="0 = greedy (default)")
    ev.add_argument("--shots", type=int, help="few-shot: number of demonstrations (default 3)")
    ev.add_argument("--trajectories", type=Path, help="few-shot: take demonstrations from this JSONL file")
    ev.add_argument("--save-trajectories", type=Path, help="write the played episodes as JSONL")
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    run = sub.add_parser("run", help="run the editing loop from a YAML config")
    run.add_argument("config", type=Path, help="YAML file of LoopConfig keys (see configs/experiments/)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (YAML value; dots reach into mappings); repeatable")
    run.add_argument("--json", action="store_true", help="print one JSON summary object as the last line")

    co = sub.add_parser("continual", help="carry one policy through a stream of tasks; forgetting and transfer")
    co.add_argument("config", type=Path, help="YAML file of StreamConfig keys (see configs/experiments/continual-*)")
    co.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value; dots reach into mappings); repeatable")
    co.add_argument("--json", action="store_true", help="print one JSON summary object as the last line")
    co.add_argument("--resume", action="store_true",
                    help="go on after the last finished stage of the stream in `out` (same config, device and dtype)")

    ab = sub.add_parser("ablate", help="run an experiment grid (envs x strategies x seeds x models), resumable")
    ab.add_argument("config", type=Path, help="YAML file of AblateConfig keys (see configs/experiments/)")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value; dots reach into mappings); repeatable")
    ab.add_argument("--dry-run", action="store_true", dest="dry_run", help="list the runs and their status, run none")
    ab.add_argument("--backend", choices=["local", "ray"], default="local")
    ab.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    ab.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a cluster started here with "
                                       "`ray start`, else a new local instance)")
    ab.add_argument("--json", action="store_true", help="print one JSON summary object as the last line")

    rep = sub.add_parser("report", help="write the Markdown and HTML report of an experiment's results")
    rep.add_argument("results", type=Path, help="an experiment's results folder (holding runs/*.json)")
    rep.add_argument("--json", action="store_true", help="print one JSON summary object as the last line")

    envs = sub.add_parser("envs", help="list the environment cards")
    envs.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    tp = bsub.add_parser("throughput", help="decisions/s: naive generate loop vs the llmrl policy")
    tp.add_argument("--env", default="CartPole-v1")
    tp.add_argument("--steps", type=int, default=2000, help="decisions of the llmrl policy to time")
    tp.add_argument("--naive-steps", type=int, default=30, dest="naive_steps")
    tp.add_argument("--n-envs", type=int, default=16, dest="n_envs")
    tp.add_argument("--frozen", action="store_true",
                    help="freeze every weight first, as an attached adapter does: the rate must not drop")
    _add_model_options(tp)
    tp.add_argument("--json", action="store_true")
    ed = bsub.add_parser("edits", help="N items in one model by one method: reliability, generalization, "
                         "locality, erase, undo")
    ed.add_argument("--method", required=True, help="an editing method (llmrl.strategies.METHODS)")
    ed.add_argument("--items", type=int, required=True, help="items drawn from the pool")
    ed.add_argument("--sequential", action="store_true", help="one edit per item, each on the earlier ones")
    ed.add_argument("--seed", type=int, default=0, help="which items are drawn, and in what order")
    ed.add_argument("--pool", type=Path, help="a saved item pool (JSON); default: the 1,000-key pool, rebuilt")
    ed.add_argument("--episodes", type=int, default=0,
                    help="play each card holding run items this many episodes before and after (0: not played)")
    ed.add_argument("--max-steps", type=int, default=500, dest="max_steps", help="decisions per such episode")
    ed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an injector option on top of the method's own (repeatable), e.g. k=1 for rag")
    ed.add_argument("--origins", type=lambda v: v.split(","), metavar="O1,O2",
                    help="draw only items of these origins (run, counterfactual, observation)")
    _add_model_options(ed)
    ed.add_argument("--json", action="store_true")
    br = bsub.add_parser("run", help="one editing-loop run: seconds per phase, efficiency, and the time to a "
                         "return threshold against PPO's")
    br.add_argument("config", type=Path, help="a run config, as for `llmrl run`")
    br.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    br.add_argument("--threshold", type=float, help="the return to reach (default: the environment's "
                    "reward_threshold, e.g. 475 on CartPole-v1)")
    br.add_argument("--no-ppo", action="store_false", dest="ppo", help="do not train PPO to the threshold")
    br.add_argument("--ppo-steps", type=int, dest="ppo_steps",
                    help="cap on PPO's training steps (default: the card's RL Zoo budget)")
    br.add_argument("--json", action="store_true")
    return parser


def _options(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_model(args: argparse.Namespace) -> dict | None:
    from llmrl.models import fetch_default, load_model, model_info

    if args.action == "fetch":
        path = fetch_default(force=args.force)
        print(f"default model cached in {path}")
        return None
    info = model_info(load_model(args.model, args.device or "auto", args.dtype or "auto"))
    if not args.json:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return info


def _restored(values: dict[str, Any], source: str) -> tuple[LLMPolicy, EvalConfig, str]:
    """The final policy of the run in ``values["run"]``, and the evaluation settings: the run's own
    (its evaluation seeds, episodes and step cap, so a greedy evaluation repeats its final one)
    unless ``values`` sets them."""
    import torch

    from llmrl.config import EvalConfig, build
    from llmrl.evaluate import eval_seed
    from llmrl.loop import finished_run, restore, run_threads
    from llmrl.models import native_bf16, resolve_device, resolve_dtype

    fixed = sorted({"env", "policy", "model", "mode", "normalization", "shots", "trajectories"} & set(values))
    if fixed:
        raise UsageError(f"eval --run plays the run's own edited policy; drop {', '.join(fixed)}")
    run, items = finished_run(values["run"])
    defaults = {"env": run.env, "episodes": run.eval_episodes, "seed": eval_seed(run.seed),
                "max_steps": run.eval_max_steps, "n_envs": run.n_envs, "device": run.device, "dtype": run.dtype,
                "threads": run_threads(values["run"])}
    cfg = build(EvalConfig, {**defaults, **values}, source=source)  # bad options fail before the model loads
    _set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cpu" and resolve_dtype(cfg.dtype, device) == torch.bfloat16 and not native_bf16():
        print("llmrl: note: the run computed in bfloat16, which this CPU emulates (no AVX512-BF16 or AMX): "
              "replaying it takes many times the run's time; --dtype float32 is fast but not the run's arithmetic",
              file=sys.stderr)
    policy = restore(values["run"], run, items, cfg.device, cfg.dtype, cfg.temperature)
    return policy, cfg, run.strategy


def _writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _set_threads(threads: int | None) -> None:
    """Torch threads for this process: the count asked for, else its share of the cores (``llmrl.cores``)."""
    import torch

    from llmrl.cores import share

    torch.set_num_threads(threads or share())


def cmd_eval(args: argparse.Namespace) -> dict:
    from llmrl.baselines import make_baseline
    from llmrl.cards import get_card
    from llmrl.config import EvalConfig, build, load_yaml
    from llmrl.evaluate import evaluate
    from llmrl.models import load_model
    from llmrl.policy import LLMPolicy
    from llmrl.rollout import save_trajectories
    from llmrl.strategies import BASELINES

    values = load_yaml(args.config) if args.config else {}
    values.update(_options(args, list(EvalConfig.model_fields)))
    source = str(args.config) if args.config else "options"
    if values.get("run") is not None:
        policy, cfg, name = _restored(values, source)
        card, variant = get_card(cfg.env)
        variant = variant or cfg.variant
    else:
        if "env" not in values:
            raise UsageError("eval needs --env or --run (or env: in --config)")
        cfg = build(EvalConfig, values, source=source)
        if cfg.policy not in BASELINES:
            raise UsageError(f"unknown policy {cfg.policy!r}; choose one of {', '.join(BASELINES)}")
        card, variant = get_card(cfg.env)
        variant = variant or cfg.variant
        card.make_env(variant).close()  # fail on a bad card before loading a model
        _set_threads(cfg.threads)
        lm = None if cfg.policy == "random" else load_model(cfg.model, cfg.device, cfg.dtype)
        policy_kwargs = {} if lm is None else dict(mode=cfg.mode, normalization=cfg.normalization,
                                                   temperature=cfg.temperature)
        policy = make_baseline(cfg.policy, card, lm, seed=cfg.seed, k=cfg.shots, trajectories=cfg.trajectories,
                               **policy_kwargs)
        name = cfg.policy
    model = policy.lm.name if isinstance(policy, LLMPolicy) else None
    if args.save_trajectories:  # a bad path fails before the episodes are played
        _writable(args.save_trajectories)
    result, trajectories = evaluate(policy, card, name, model, cfg.episodes, cfg.seed,
                                    cfg.n_envs, cfg.max_steps, variant, progress=sys.stderr.isatty())
    if args.save_trajectories:
        save_trajectories(args.save_trajectories, trajectories, card.action_words)
    import torch

    summary = {**result.summary(), "threads": torch.get_num_threads()}
    if not args.json:
        print(f"{summary['env']}  policy={summary['policy']}  model={summary['model']}  "
              f"episodes={summary['episodes']}  threads={summary['threads']}")
        print(f"  return {summary['mean_return']:.2f} ± {summary['std_return']:.2f}  "
              f"length {summary['mean_length']:.1f}  {summary['decisions_per_s']:.1f} decisions/s  "
              f"cache hits {summary['cache_hit_rate']:.0%}  fallbacks {summary['fallback_rate']:.0%}")
    return summary


def cmd_run(args: argparse.Namespace) -> dict:
    from llmrl.config import LoopConfig, apply_overrides, build, load_yaml
    from llmrl.loop import run
    from llmrl.phases import describe

    values = apply_overrides(load_yaml(args.config), args.set)
    cfg = build(LoopConfig, values, source=str(args.config), overrides=args.set)
    _set_threads(None)

    def show(row: dict) -> None:
        if not args.json:
            kl = "-" if row["locality_kl"] is None else f"{row['locality_kl']:.4f}"
            rel = "-" if row["reliability"] is None else f"{row['reliability']:.2f}"
            print(f"iter {row['iteration']:>2}  env steps {row['env_steps']:>6}  return {row['eval_mean_return']:7.1f}"
                  f"  items {row['items']:>2}  reliability {rel}  locality KL {kl}"
                  f"  edit {row['edit_seconds']:.1f}s", flush=True)

    summary = run(cfg, progress=sys.stderr.isatty(), on_row=show)
    if not args.json:
        print(describe(summary.phases, summary.wall_seconds))
        print(f"results in {summary.out}")
    return summary.to_json()


def cmd_continual(args: argparse.Namespace) -> dict:
    from llmrl.config import apply_overrides, build, load_yaml
    from llmrl.continual.stream import StreamConfig, run_stream

    values = apply_overrides(load_yaml(args.config), args.set)
    cfg = build(StreamConfig, values, source=str(args.config), overrides=args.set)
    _set_threads(None)

    def show(line: dict) -> None:
        if not args.json:
            where = "untouched model" if line["stage"] == 0 else f"after stage {line['stage']} ({line['env']})"
            steps = line.get("steps_to_target")
            reached = ("" if line.get("target") is None else "  target not reached" if steps is None
                       else f"  target reached after {steps} steps")
            items = f"  items {line['items']}" if "items" in line else ""
            print(f"{where:<40} returns {' '.join(f'{r:7.1f}' for r in line['row'])}{items}{reached}", flush=True)

    summary = run_stream(cfg, progress=sys.stderr.isatty(), on_stage=show, resume=args.resume)
    if not args.json:
        m = summary.metrics
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"ACC {fmt(m.acc)}  BWT {fmt(m.bwt)}  FWT {fmt(m.fwt)}  forgetting {fmt(m.forgetting)}"
              f"  ({'normalised' if summary.matrix is not None else 'raw returns'}); results in {summary.out}")
    return summary.to_json()


def cmd_ablate(args: argparse.Namespace) -> dict:
    from llmrl.ablate import ablate, expand, load_config
    from llmrl.continual.checkpoint import NAME, stopped_after
    from llmrl.resume import refuse_auto_redo, status

    cfg = load_config(args.config, args.set)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.dry_run:
        specs = expand(cfg)
        refuse_auto_redo(cfg.dtype, cfg.out, specs)
        runs = [{"run_id": s.run_id, "status": status(cfg.out, s)} for s in specs]
        for r, s in zip(runs, specs):
            if s.stream and r["status"] != "ok":
                r["after_stage"] = stopped_after(cfg.out / "runs" / s.run_id / NAME)
        if not args.json:
            for r in runs:
                partial = f"  (goes on after stage {r['after_stage']})" if r.get("after_stage") is not None else ""
                print(f"{r['status']:<7} {r['run_id']}{partial}")
            print(f"{len(runs)} runs, {sum(r['status'] == 'ok' for r in runs)} done, results in {cfg.out}")
        return {"runs": runs, "out": str(cfg.out)}

    def show(record: RunRecord, n: int, total: int) -> None:
        if not args.json:
            if not record.ok:
                outcome = (record.error or "").strip().splitlines()[-1]
            elif record.stream is not None:
                outcome = f"ACC {record.stream['acc']:.3f}"
            elif record.capacity is not None:
                outcome = f"reliability {record.capacity['reliability']:.2f}"
            else:
                outcome = f"return {record.final_mean_return:.1f}"
            print(f"[{n}/{total}] {record.status:<6} {record.run_id}  {outcome}  "
                  f"({record.wall_seconds:.0f} s)", flush=True)

    summary = ablate(cfg, args.backend, args.workers, args.address, on_record=show)
    if not args.json:
        print(f"{summary['ran']} runs done ({summary['failed']} failed), {summary['skipped']} already finished; "
              f"results in {summary['out']}")
    return summary


def cmd_report(args: argparse.Namespace) -> dict:
    from llmrl.report import write_report

    result = write_report(args.results)
    if not args.json and "groups" in result:  # a continual stream's experiment
        print(f"stream {' -> '.join(result['stages'])} ({'normalised' if result['normalised'] else 'raw returns'})")
        print(f"  {'strategy/accumulate':<22} {'runs':>4}  {'ACC IQM [95% CI]':<24} {'BWT IQM':>8}  {'forgetting':>10}")
        for name, g in result["groups"].items():
            acc = "-" if g["acc"] is None else f"{g['acc'][0]:.2f} [{g['acc'][1]:.2f}, {g['acc'][2]:.2f}]"
            bwt = "-" if g["bwt"] is None else f"{g['bwt'][0]:.2f}"
            forgetting = "-" if g["forgetting"] is None else f"{g['forgetting'][0]:.2f}"
            print(f"  {name:<22} {g['runs']:>4}  {acc:<24} {bwt:>8}  {forgetting:>10}")
        print(f"report: {result['markdown']} and {result['html']}")
    elif not args.json and "cells" in result:  # a capacity grid's
        print(f"  {'mode/method/N':<24} {'seeds':>5}  {'reliability':>11}  {'generalization':>14}  {'KL':>6}  "
              f"{'erase ok':>8}  {'undo exact':>10}")
        for name, c in result["cells"].items():
            gen = "-" if c["generalization"] is None else f"{c['generalization'][0]:.2f}"
            n = c["seeds"]
            print(f"  {name:<24} {n:>5}  {c['reliability'][0]:>11.2f}  {gen:>14}  "
                  f"{c['locality_kl'][0]:>6.3f}  {c['erase_ok']:>4}/{n:<3}  {c['undo_exact']:>6}/{n:<3}")
        print(f"report: {result['markdown']} and {result['html']}")
    elif not args.json:
        for env, rows in result["stats"].items():
            normalised = env in result["normalised"]
            score, digits = ("normalised score", 2) if normalised else ("final return", 1)
            print(f"{env}\n  {'strategy':<17} {'runs':>4}  {f'IQM {score} [95% CI]':<30} {'env steps':>9}")
            for strategy, st in rows.items():
                ci = f"{st['iqm']:.{digits}f} [{st['ci'][0]:.{digits}f}, {st['ci'][1]:.{digits}f}]"
                print(f"  {strategy:<17} {st['runs']:>4}  {ci:<30} {st['env_steps']:>9,.0f}")
        if result["failed"]:
            print(f"{len(result['failed'])} failed runs are listed in the report")
        print(f"report: {result['markdown']} and {result['html']}")
    return result


def cmd_envs(args: argparse.Namespace) -> list:
    from llmrl.cards import all_cards

    rows = [{"name": k, "env_id": c.env_id, "actions": c.action_words, "variants": list(c.variants)}
            for k, c in sorted(all_cards().items())]
    if not args.json:
        for r in rows:
            actions = ", ".join(r["actions"]) or "none (the card cannot play: give it action words)"
            print(f"{r['name']:<34} actions: {actions}"
                  + (f"   variants: {', '.join(r['variants'])}" if r["variants"] else ""))
    return rows


def cmd_bench(args: argparse.Namespace) -> dict:
    _set_threads(None)
    if args.bench == "edits":
        return _bench_edits(args)
    if args.bench == "run":
        return _bench_run(args)
    from llmrl.bench import throughput

    result = throughput(args.env, steps=args.steps, naive_steps=args.naive_steps, n_envs=args.n_envs,
                        model=args.model, device=args.device or "auto", dtype=args.dtype or "auto",
                        frozen=args.frozen)
    if not args.json:
        print(f"naive generate loop : {result['naive_decisions_per_s']:8.2f} decisions/s")
        print(f"llmrl policy        : {result['decisions_per_s']:8.2f} decisions/s  "
              f"(cache hits {result['cache_hit_rate']:.0%}, {result['n_envs']} envs)")
        print(f"speedup             : {result['speedup']:8.1f}x")
        print(f"uncached tokens     : {result['achieved_gflops']:8.1f} GFLOP/s of {result['matmul_gflops']:.1f} "
              f"measured matmul ({result['matmul_fraction']:.0%})")
    return result


def _bench_edits(args: argparse.Namespace) -> dict:
    from llmrl.capacity.bench import run_capacity
    from llmrl.config import apply_overrides

    result = run_capacity(args.method, args.items, sequential=args.sequential, seed=args.seed, model=args.model,
                          device=args.device or "auto", dtype=args.dtype or "auto", pool=args.pool,
                          episodes=args.episodes, max_steps=args.max_steps,
                          options=apply_overrides({}, args.set), origins=args.origins).to_json()
    if not args.json:
        mode = "sequential" if args.sequential else "batch"
        print(f"{args.method}, {args.items} items ({mode}) on {result['model']}")
        for key in ("reliability_before", "reliability", "reliability_changed", "generalization",
                    "generalization_fresh", "generalization_reworded", "locality_kl", "locality_top1",
                    "edit_seconds", "params_touched", "erase_ok", "undo_exact"):
            print(f"  {key:<23}: {_shown(result[key])}")
        for erase in result["erase"]:
            print(f"  erase {erase['erased']:<17}: restored {_shown(erase['restored'])}, items left "
                  f"{_shown(erase['kept'])} (before: {_shown(erase['kept_before'])})")
    return result


def _bench_run(args: argparse.Namespace) -> dict:
    from llmrl.config import LoopConfig, apply_overrides, build, load_yaml
    from llmrl.speed import bench_run, describe_bench

    if args.ppo_steps is not None and args.ppo_steps < 1:
        raise UsageError(f"--ppo-steps must be >= 1, got {args.ppo_steps}")
    cfg = build(LoopConfig, apply_overrides(load_yaml(args.config), args.set), source=str(args.config),
                overrides=args.set)
    result = bench_run(cfg, args.threshold, ppo=args.ppo, ppo_steps=args.ppo_steps, progress=sys.stderr.isatty())
    if not args.json:
        print("\n".join(describe_bench(result)))
    return result


def _shown(value: Any) -> str:
    """A measurement as the terminal shows it: floats to 4 significant digits, counts with separators."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


COMMANDS = {"model": cmd_model, "eval": cmd_eval, "run": cmd_run, "continual": cmd_continual, "ablate": cmd_ablate,
            "report": cmd_report, "envs": cmd_envs, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        result = COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"llmrl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmrl: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
