"""The same capacity cells in two precisions, seed by seed: what running the grid in float32 changes.

Two folders of capacity records (``llmrl ablate`` with a ``capacity`` block) hold cells of the same
method, mode, N and seed, run in different precisions (say, the grid's bf16 cells and the same slice run
again with ``--set dtype=float32 --set out=...``). For every cell found in both this prints the two
runs' figures side by side, then per measure the mean difference over the pairs and the largest one.
The items a cell draws depend on N and its seed alone, so a pair edits the same items.

Usage: ``python3 scripts/precision_pairs.py reports/edits reports/edits-float32``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MEASURES = ("reliability", "reliability_changed", "generalization", "locality_kl", "locality_top1")


def cells(folder: Path) -> dict[tuple, dict]:
    out = {}
    for path in sorted((folder / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        c = record.get("capacity")
        if record.get("status") != "ok" or not c:
            continue
        out[(c["method"], "sequential" if c["sequential"] else "batch", c["items"], c["seed"])] = {
            **c, "dtype": record["runtime"]["dtype"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    a, b = cells(args.first), cells(args.second)
    pairs = [(key, a[key], b[key]) for key in sorted(set(a) & set(b))]
    if not pairs:
        raise SystemExit("no cell is in both folders")
    short = {"reliability": "rel", "reliability_changed": "changed", "generalization": "gen",
             "locality_kl": "KL", "locality_top1": "top-1"}
    print("cell".ljust(28) + "".join(f"{short[m]:>16}" for m in MEASURES) + "   erase ok")
    diffs: dict[str, list[float]] = {m: [] for m in MEASURES}
    for (method, mode, n, seed), x, y in pairs:
        row = f"{method} {mode} N={n} s{seed}".ljust(28)
        for m in MEASURES:
            if x.get(m) is None or y.get(m) is None:
                row += f"{'-':>16}"
                continue
            diffs[m].append(y[m] - x[m])
            row += f"{x[m]:>8.3f} {y[m]:<7.3f}"
        print(row + f"   {x['erase_ok']!s:>5} {y['erase_ok']!s:<5}")
    dtypes = f"{pairs[0][2]['dtype']} − {pairs[0][1]['dtype']}"
    print(f"\n{len(pairs)} pairs; second minus first ({dtypes}): mean, largest in size")
    for m in MEASURES:
        if diffs[m]:
            d = diffs[m]
            print(f"  {short[m]:<8} {sum(d) / len(d):+.3f}  {max(d, key=abs):+.3f}")


if __name__ == "__main__":
    main()
