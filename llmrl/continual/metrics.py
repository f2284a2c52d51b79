"""Continual-learning metrics of a stream's score matrix, as the literature defines them.

``R[i][j]`` is the score on stage ``j`` after learning stage ``i`` (stages
1..T), and row 0 is the untouched model before any stage. With T stages:

- ACC, the average final score: (1/T) Σ_j R[T][j] (Lopez-Paz & Ranzato,
  "Gradient Episodic Memory for Continual Learning", NeurIPS 2017).
- BWT, backward transfer: 1/(T-1) Σ_{j<T} (R[T][j] - R[j][j]); negative
  is forgetting (same paper).
- FWT, forward transfer: 1/(T-1) Σ_{j>1} (R[j-1][j] - b_j), with b_j the
  untouched model's score R[0][j] (same paper, where b_j is a randomly
  initialised model's; here the model before any edit).
- Forgetting: 1/(T-1) Σ_{j<T} (max_{1<=l<T} R[l][j] - R[T][j]) (Chaudhry
  et al., "Riemannian Walk for Incremental Learning", ECCV 2018).
- Plasticity: R[j][j], each stage's score right after it was learned.

Indices in the code are 0-based: stage j is column j - 1 and row j.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

Matrix = list[list[float]]


@dataclass(frozen=True)
class StreamMetrics:
    acc: float
    #: None for a one-stage stream (no earlier stage to look back or forward from).
    bwt: float | None
    fwt: float | None
    forgetting: float | None
    plasticity: list[float]

    def to_json(self) -> dict:
        return asdict(self)


def normalise(raw: Matrix, low: list[float], high: list[float]) -> Matrix:
    """Per stage (column), (score - low) / (high - low): 0 is the low reference, 1 the high one."""
    if len(low) != len(high) or any(len(row) != len(low) for row in raw):
        raise ValueError("one low and one high reference score per stage (column) are needed")
    if any(h == lo for lo, h in zip(low, high)):
        raise ValueError(f"a stage's references are equal (low {low}, high {high}): nothing to normalise by")
    return [[(x - lo) / (h - lo) for x, lo, h in zip(row, low, high)] for row in raw]


def stream_metrics(r: Matrix) -> StreamMetrics:
    """ACC, BWT, FWT, forgetting and plasticity of a (T+1) x T matrix whose row 0 is the untouched model."""
    t = len(r) - 1
    if t < 1 or any(len(row) != t for row in r):
        raise ValueError(f"a stream of T stages needs a (T+1) x T matrix, got {len(r)} rows of {[len(x) for x in r]}")
    final = r[t]
    acc = sum(final) / t
    plasticity = [r[j][j - 1] for j in range(1, t + 1)]
    if t == 1:
        return StreamMetrics(acc, None, None, None, plasticity)
    earlier = range(1, t)  # stages 1..T-1
    bwt = sum(final[j - 1] - r[j][j - 1] for j in earlier) / (t - 1)
    fwt = sum(r[j - 1][j - 1] - r[0][j - 1] for j in range(2, t + 1)) / (t - 1)  # row j-1, stage j
    forgetting = sum(max(r[i][j - 1] for i in earlier) - final[j - 1] for j in earlier) / (t - 1)
    return StreamMetrics(acc, bwt, fwt, forgetting, plasticity)
