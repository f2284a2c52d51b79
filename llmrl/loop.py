"""The editing loop: collect feedback, turn it into knowledge, inject it, evaluate; repeat.

One run is one (environment, strategy, seed). Iteration 0 evaluates the
untouched policy; each later iteration spends ``steps_per_iteration``
environment steps of exploratory play, folds them into the knowledge base,
undoes the previous edit and injects all items now in force, then evaluates
the policy (return on fixed evaluation seeds) and the edit (reliability,
generalization, locality, cost). An iteration whose feedback changed no item
leaves the policy as it was, so its row carries the last evaluation over. Every iteration is one JSON line in
``iterations.jsonl`` and a set of TensorBoard scalars, with the seconds
each phase of it took (:mod:`llmrl.phases`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from llmrl.baselines import baseline_prompt
from llmrl.cards import Card, get_card
from llmrl.config import LoopConfig, build
from llmrl.errors import UsageError
from llmrl.evaluate import eval_seed, evaluate, portability
from llmrl.folders import atomic_write, exclusive, writable
from llmrl.inject import Edit, Injector
from llmrl.knowledge import Extraction, KnowledgeBase, KnowledgeItem, texts_by_situation
from llmrl.learner import Learner, keep_settings, make_injector
from llmrl.metrics import LocalityProbe, generalization, reliability
from llmrl.models import LoadedModel, load_model
from llmrl.phases import PhaseClock, efficiency
from llmrl.policy import LLMPolicy
from llmrl.record import EditMetrics


@dataclass(frozen=True)
class LoopSummary:
    """What one run of the loop ends with: its last evaluation and edit, and every iteration's row."""

    env: str
    strategy: str
    model: str
    runtime: dict[str, str | int]
    seed: int
    iterations: int
    env_steps: int
    #: One per evaluation (iteration 0 is the untouched policy), as in ``iterations.jsonl``.
    rows: list[dict[str, Any]]
    final_mean_return: float
    final_std_return: float
    final_returns: list[float]
    initial_mean_return: float
    #: The last edit (the last iteration's items and metrics).
    edit: EditMetrics
    portability: dict[str, dict] | None
    out: str
    #: Seconds per phase over the whole run (setup included), with ``acting`` and ``env`` beside them.
    phases: dict[str, float]
    wall_seconds: float

    @property
    def efficiency(self) -> float | None:
        """The share of the run's wall time spent acting and stepping environments (:mod:`llmrl.phases`)."""
        return efficiency(self.phases, self.wall_seconds)

    def to_json(self) -> dict[str, Any]:
        """The summary ``llmrl run --json`` prints: everything but the per-iteration rows, the edit flattened."""
        flat = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("rows", "edit")}
        return {**flat, **self.edit.model_dump(), "efficiency": self.efficiency}


def run(cfg: LoopConfig, progress: bool = True, on_row: Callable[[dict], None] | None = None) -> LoopSummary:
    """Run the loop; writes its outputs to ``cfg.out`` and returns the summary."""
    card, variant = get_card(cfg.env)
    card.make_env(variant).close()
    out = cfg.out or Path("runs") / f"{card.key}-{cfg.strategy}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    injector = None if cfg.strategy == "none" else make_injector(cfg.strategy, dict(cfg.strategy_options), out)
    with exclusive(out, "llmrl run"):
        writable(out, "the run's folder")
        # A rerun into the same folder starts afresh: the log, the items and the TensorBoard scalars of an
        # earlier run there would otherwise mix with this one's.
        for name in ("iterations.jsonl", "items.json", "injector.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
        return _iterate(cfg, card, variant, injector, out, progress, on_row)


def _iterate(cfg: LoopConfig, card: Card, variant: str | None, injector: Injector | None, out: Path,
             progress: bool, on_row: Callable[[dict], None] | None) -> LoopSummary:
    start, clock = time.perf_counter(), PhaseClock()
    atomic_write(out / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=2))
    if injector is not None:
        keep_settings(out, cfg.strategy, dict(cfg.strategy_options))
    torch.manual_seed(cfg.seed)
    with clock.phase("setup"):
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
        atomic_write(out / "runtime.json", json.dumps(lm.runtime, indent=2))
        policy = base_policy(cfg, card, lm)
        probe = LocalityProbe.for_card(lm, card, cfg.locality_prompts,
                                       measured=injector is not None and injector.edits_parameters) \
            if cfg.locality else None
        locality = probe.unchanged() if probe else None  # iteration 0: the model the probe was built on
    kb = KnowledgeBase(Extraction(**{f.name: getattr(cfg, f.name) for f in fields(Extraction)}))
    writer = SummaryWriter(str(out / "tensorboard"))
    rows: list[dict] = []
    learner = Learner({card.key: (policy, kb)}, injector, cfg, clock=clock)
    env_steps = 0
    try:
        with tqdm(total=cfg.iterations + 1, desc=f"{cfg.strategy} on {card.key}", unit="it",
                  disable=not progress) as bar:
            for it in range(cfg.iterations + 1):
                t0, before = time.perf_counter(), clock.snapshot()
                changes = {"insert": [], "modify": [], "retain": [], "erase": []}
                touched = False
                if it > 0:
                    lesson = learner.learn(card, variant, it, cfg.steps_per_iteration)
                    env_steps += lesson.env_steps
                    changes, touched = lesson.changes, lesson.edited
                if probe and touched:  # otherwise the model is the one last measured, and so is its locality
                    with clock.phase("locality"):
                        locality = probe.measure() if learner.model_edited else probe.unchanged()
                if it > 0 and not any(changes.values()):
                    # same items, same policy: its greedy play of the same evaluation seeds is the last row's
                    row = _carried(rows[-1], it, env_steps)
                else:
                    row = _evaluate(cfg, card, variant, policy, kb, learner.edit, it, env_steps, changes,
                                    locality, clock)
                if it == cfg.iterations and cfg.portability:
                    with clock.phase("portability"):
                        row["portability"] = portability(policy, card, variant, cfg.eval_episodes,
                                                         seed=eval_seed(cfg.seed), n_envs=cfg.n_envs,
                                                         max_steps=cfg.eval_max_steps, clock=clock)
                row["wall_seconds"] = time.perf_counter() - t0
                row["phases"] = PhaseClock.since(before, clock.snapshot())
                rows.append(row)
                _log(writer, out, row)
                if on_row:
                    on_row(row)
                bar.update(1)
                bar.set_postfix(ret=f"{row['eval_mean_return']:.1f}", items=len(kb.items))
    finally:
        writer.close()
        atomic_write(out / "items.json", json.dumps(
            {"items": [i.to_json() for i in kb.items.values()], "erased": [i.to_json() for i in kb.erased]},
            indent=2))
    last = rows[-1]
    return LoopSummary(
        env=card.key + (f":{variant}" if variant else ""), strategy=cfg.strategy, model=lm.name, runtime=lm.runtime,
        seed=cfg.seed, iterations=cfg.iterations, env_steps=env_steps, rows=rows,
        final_mean_return=last["eval_mean_return"], final_std_return=last["eval_std_return"],
        final_returns=last["eval_returns"], initial_mean_return=rows[0]["eval_mean_return"],
        edit=EditMetrics(items=len(kb.items), **{k: last[k] for k in EditMetrics.model_fields if k != "items"}),
        portability=last.get("portability"), out=str(out), phases=clock.snapshot(),
        wall_seconds=time.perf_counter() - start)


def base_policy(cfg: LoopConfig, card: Card, lm: LoadedModel, temperature: float = 0.0) -> LLMPolicy:
    """The untouched policy a run starts from, and that :func:`restore` edits again."""
    return LLMPolicy(lm, baseline_prompt(cfg.base_policy, card), seed=cfg.seed, temperature=temperature,
                     default_action=card.action_words.index(card.default_action_word))


def finished_run(folder: Path | str) -> tuple[LoopConfig, list[KnowledgeItem]]:
    """The config and final items of a finished run; a clear error for any other folder.

    Reading them is cheap, so a caller can check its own options before it loads a model.
    """
    folder = Path(folder)
    try:
        cfg = build(LoopConfig, json.loads((folder / "config.json").read_text()), source=str(folder / "config.json"))
        items = [KnowledgeItem(**i) for i in json.loads((folder / "items.json").read_text())["items"]]
        done = len((folder / "iterations.jsonl").read_text().splitlines())
    except FileNotFoundError as exc:
        raise UsageError(f"{folder} is not a finished editing-loop run: it lacks {Path(exc.filename).name}") from exc
    if done != cfg.iterations + 1:  # items.json is written even when a run stops early
        raise UsageError(f"{folder} stopped after {done} of its {cfg.iterations + 1} evaluations: not a finished run")
    return cfg, items


def run_threads(folder: Path | str) -> int | None:
    """The torch threads a run computed with (``runtime.json``; None for runs from before it was kept).

    The thread count changes the order of floating-point sums, and in bf16 that can change what an
    adapter learns, so a replay computes with the run's.
    """
    path = Path(folder) / "runtime.json"
    return json.loads(path.read_text()).get("threads") if path.exists() else None


def restore(folder: Path | str, cfg: LoopConfig, items: list[KnowledgeItem], device: str | None = None,
            dtype: str | None = None, temperature: float = 0.0) -> LLMPolicy:
    """The final policy of the finished run in ``folder`` (see :func:`finished_run`), to evaluate again.

    The run's base prompt gets its final items injected again, with the run's
    injector settings (``injector.json``; for runs from before it was kept, the
    config's strategy options and today's defaults): the items a run ends with are those of its last edit, and
    every injector is seeded, so this is the policy its last evaluation played.
    The weights injector computes its statistics from the corpus the run kept.
    ``device`` and ``dtype`` default to the run's; its saved adapter is left as it is.
    """
    card, _ = get_card(cfg.env)
    lm = load_model(cfg.model, device or cfg.device, dtype or cfg.dtype)
    policy = base_policy(cfg, card, lm, temperature)
    if items and cfg.strategy != "none":
        settings = Path(folder) / "injector.json"
        options = json.loads(settings.read_text())["options"] if settings.exists() else dict(cfg.strategy_options)
        corpus = Path(folder) / "weights" / "corpus.safetensors"
        if cfg.strategy == "weights" and corpus.exists():
            options.setdefault("corpus", corpus)
        make_injector(cfg.strategy, options).inject(policy, items)
    return policy


def _evaluate(cfg: LoopConfig, card: Card, variant: str | None, policy: LLMPolicy, kb: KnowledgeBase,
              edit: Edit | None, it: int, env_steps: int, changes: dict, locality: dict | None,
              clock: PhaseClock) -> dict:
    with clock.phase("evaluate"):
        result, trajectories = evaluate(policy, card, cfg.strategy, policy.lm.name, cfg.eval_episodes,
                                        seed=eval_seed(cfg.seed), n_envs=cfg.n_envs,
                                        max_steps=cfg.eval_max_steps, variant=variant, progress=False, clock=clock)
    items = list(kb.items.values())
    summary = result.summary()
    with clock.phase("edit_metrics"):
        held = reliability(policy, items) if items else None
        general = generalization(policy, items, texts_by_situation(trajectories)) if items else None
    row = {
        "iteration": it, "env_steps": env_steps, "eval_mean_return": summary["mean_return"],
        "eval_std_return": summary["std_return"], "eval_returns": summary["returns"],
        "items": len(items), "inserted": len(changes["insert"]), "modified": len(changes["modify"]),
        "retained": len(changes["retain"]), "erased": len(changes["erase"]),
        "reliability": held, "generalization": general,
        "edit_seconds": edit.seconds if edit else 0.0, "params_touched": edit.params_touched if edit else 0,
        "edit_info": _jsonable(edit.info) if edit else {},
        "decisions_per_s": summary["decisions_per_s"], "cache_hit_rate": summary["cache_hit_rate"],
        "carried": False,
    }
    row.update(locality or {"locality_kl": None, "locality_top1": None})
    return row


def _carried(last: dict, it: int, env_steps: int) -> dict:
    """The row of an iteration whose feedback changed no item: the policy is the one the last row evaluated,
    so its evaluation and edit metrics stand (marked ``carried``; no decisions were timed)."""
    kept = {k: v for k, v in last.items() if k not in ("wall_seconds", "phases", "portability")}
    return {**kept, "iteration": it, "env_steps": env_steps, "inserted": 0, "modified": 0, "retained": 0,
            "erased": 0, "decisions_per_s": None, "cache_hit_rate": None, "carried": True}


def _jsonable(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def _log(writer: Any, out: Path, row: dict) -> None:
    with open(out / "iterations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration":
            writer.add_scalar(key, value, row["env_steps"])
    for phase, seconds in row.get("phases", {}).items():
        writer.add_scalar(f"phases/{phase}", seconds, row["env_steps"])
    writer.flush()

