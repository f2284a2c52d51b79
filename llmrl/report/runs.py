"""Reading an experiment's run records into the report's :class:`Run`, on the report's scale."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from llmrl.errors import UsageError
from llmrl.record import RunRecord, read_record


@dataclass(frozen=True)
class Run:
    """One finished run, its returns already on the report's scale (raw or normalised)."""

    run_id: str
    env: str
    strategy: str
    seed: int
    model: str | None
    score: float  # final mean return over the evaluation episodes
    final_return: float  # the same, raw
    steps: np.ndarray  # the learning curve's env_steps, ascending
    curve: np.ndarray  # mean return at each of those steps
    env_steps: float
    wall_seconds: float
    edit: dict | None
    #: Final mean return (raw, never normalised) on each card variant the run was evaluated on.
    portability: dict[str, float]
    #: Seconds per phase (:mod:`llmrl.phases`); None for runs recorded before phases were timed.
    phases: dict[str, float] | None = None


def experiment_references(results_dir: Path) -> dict[str, tuple[float, float]]:
    """(random, human) per environment from the experiment's config, written by ``llmrl ablate``."""
    try:
        config = json.loads((results_dir / "experiment.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return {}
    return {env: (ref["random"], ref["human"]) for env, ref in (config.get("reference_scores") or {}).items()}


def records_of_kind(results_dir: Path, kind: str) -> list[RunRecord]:
    """Every record, when the experiment's records are of ``kind`` (``stream``, ``capacity``); else none."""
    records = [read_record(p) for p in sorted((results_dir / "runs").glob("*.json"))]
    found = [r for r in records if r.kind == kind]
    if found and len(found) != len(records):
        raise UsageError(f"{results_dir} mixes {kind} runs with other runs; report them from separate folders")
    return found


def precision_labels(records: list[RunRecord], noun: str, row: str) -> tuple[dict[str, str], str]:
    """Per run id, the suffix that names its language model's precision (`` (float32)``) when the records
    ran in more than one, else ``""`` (also for runs with no language model, such as PPO's); and a sentence
    saying which they ran in. A report's row never pools precisions: on a model this small they can change
    what an edit does (reports/edits-float32/NOTES.md)."""
    precision_of = {r.run_id: r.runtime["dtype"] for r in records if (r.runtime or {}).get("dtype")}
    dtypes = sorted(set(precision_of.values()))
    if len(dtypes) < 2:
        said = f"The language model ran in {dtypes[0]} in every {noun}." if dtypes else ""
        return {r.run_id: "" for r in records}, said
    return ({r.run_id: f" ({precision_of[r.run_id]})" if r.run_id in precision_of else "" for r in records},
            f"The language model ran in {' and '.join(dtypes)}; each {row}'s rows are split by precision.")


def load_runs(results_dir: Path, reference_scores: dict[str, tuple[float, float]]
              ) -> tuple[list[Run], list[tuple[str, str]]]:
    """Finished runs, and (run id, last error line) of the failed ones."""
    paths = sorted((results_dir / "runs").glob("*.json"))
    if not paths:
        raise UsageError(f"no runs in {results_dir / 'runs'}: expected one JSON file per run there")
    runs, failed = [], []
    for path in paths:
        record = read_record(path)
        if not record.ok:
            failed.append((record.run_id, last_error_line(record.error)))
            continue
        if not record.curve or record.final_mean_return is None or record.env_steps is None:
            raise UsageError(f"{path}: a finished run record needs curve, final_mean_return and env_steps")
        runs.append(_parse_run(record, reference_scores))
    return runs, failed


def last_error_line(error: str | None) -> str:
    """The line of a failed run's traceback that says what went wrong."""
    lines = [ln for ln in (error or "").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no error text)"


def _parse_run(record: RunRecord, reference_scores: dict[str, tuple[float, float]]) -> Run:
    scale = _scale(record.env, reference_scores.get(record.env))
    points = sorted((float(p.env_steps), p.mean_return) for p in record.curve)
    final = record.final_mean_return
    return Run(run_id=record.run_id, env=record.env, strategy=record.strategy, seed=record.seed,
               model=record.model, score=scale(final), final_return=final,
               steps=np.array([s for s, _ in points]), curve=np.array([scale(v) for _, v in points]),
               env_steps=float(record.env_steps), wall_seconds=record.wall_seconds,
               edit=record.edit.model_dump() if record.edit else None,
               portability={name: v.mean_return for name, v in (record.portability or {}).items()
                            if v.mean_return is not None},
               phases=record.phases)


def _scale(env: str, reference: tuple[float, float] | None) -> Callable[[float], float]:
    """Identity, or the normalisation (x - random) / (reference - random)."""
    if reference is None:
        return lambda x: x
    low, high = (float(v) for v in reference)
    if high == low:
        raise UsageError(f"reference scores for {env}: random and reference score are equal ({low})")
    return lambda x: (x - low) / (high - low)
