"""Every experiment figure the README, docs/ and the reports' NOTES quote agrees with its source.

A quoted table or line is introduced by a marker comment that names its source:

- ``<!-- figures: report PATH "Section" -->``: the table below quotes the first
  table under ``## Section`` of a generated report; every cell it shows must
  equal the report's cell in the same row (strategy) and column;
- ``<!-- figures: demo PATH "Section" ["Label"] -->``: the same for the demo's
  printed table (its numbers as the command line rounds them) or its edit
  metrics, against the committed demo report;
- ``<!-- figures: quote PATH -->``: each line of the blockquote below occurs in
  the report verbatim;
- ``<!-- figures: records DIR seed=N -->``: in the table below (rows: games,
  columns: strategies) the first number of each cell is that run's final mean
  return in its record;
- ``<!-- figures: lambda DIR -->``: the λ study's table against its JSONL outputs;
- ``<!-- figures: bench DIR -->``: rows name a ``DIR/<row>.json`` saved from ``llmrl bench run --json``;
  each cell is that output's field for its column, rounded as shown;
- ``<!-- figures: none (why) -->``: figures with no committed source (single
  runs before a grid, benchmarks).

Besides the marked tables, every interval "IQM [low, high]" in the text must be
one the report prints, and the Atari notes' per-seed sequences "a / b / c / d / e"
must be a row of that game's per-seed table. Nothing here hard-codes a figure:
both sides are read from the files. No model is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORTS = {name: ROOT / "reports" / name / "report.md" for name in ("control", "atari")}
NOTES = sorted((ROOT / "reports").rglob("NOTES.md"))  # reports/continual/<stream>/NOTES.md too
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*figures:\s*(\w+)\s*(.*?)\s*-->")
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
INTERVAL = re.compile(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]")
STRATEGY_CELLS = {"random", "zero-shot", "few-shot", "chain-of-thought", "expert-hint", "context", "adapter",
                  "weights", "ppo", "ppo-pixels"}


def norm(text: str) -> str:
    """One spelling for both sides: ASCII minus, no bold or escapes, single spaces."""
    text = text.replace("−", "-").replace("–", "-").replace("**", "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def short_env(name: str) -> str:
    """``ALE/Pong-v5`` -> ``Pong``: the README may name a game without its ALE id."""
    return re.sub(r"-v\d+$", "", name.removeprefix("ALE/"))


def cells(line: str) -> list[str]:
    return [norm(c) for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[tuple[int, str | None, list[str], list[list[str]]]]:
    """(line index, marker before it or None, header, rows) of every Markdown table outside code blocks."""
    lines, out, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and lines[i].lstrip().startswith("|") and i + 1 < len(lines) \
                and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            start, header, rows = i, cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            out.append((start, marker_before(lines, start), header, rows))
            continue
        i += 1
    return out


def marker_before(lines: list[str], index: int) -> str | None:
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return lines[j].strip() if j >= 0 and MARKER.search(lines[j]) else None


def markers(text: str) -> list[tuple[int, str, str]]:
    return [(i, m.group(1), m.group(2)) for i, line in enumerate(text.splitlines()) if (m := MARKER.search(line))]


def section_table(report: str, section: str, label: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """The first table under ``## section`` (after the line starting with ``label``, if given)."""
    lines = report.splitlines()
    try:
        i = next(k for k, line in enumerate(lines) if line.strip() == f"## {section}")
    except StopIteration:
        raise AssertionError(f"the report has no section {section!r}") from None
    end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    if label is not None:
        i = next((k for k in range(i, end) if lines[k].startswith(label)), None)
        assert i is not None, f"section {section!r} has no {label!r}"
    found = [t for t in tables("\n".join(lines[i:end]))]
    assert found, f"section {section!r} has no table"
    _, _, header, rows = found[0]
    return header, {row_key(header, row): row for row in rows}


def row_key(header: list[str], row: list[str]) -> str:
    """A row's name: its first cell, and its second where that is the accumulation mode (stream reports)
    or the item count (capacity reports)."""
    first = row[0].rstrip("*").strip()
    return f"{first} / {row[1]}" if len(header) > 1 and header[1] in ("accumulate", "N") else first


def args_of(spec: str) -> tuple[str, list[str]]:
    path, *rest = spec.split(" ", 1)
    return path, re.findall(r'"([^"]+)"', rest[0] if rest else "")


def column_index(header: list[str], name: str) -> int:
    for k, h in enumerate(header):
        if h == name or short_env(h) == name:
            return k
    raise AssertionError(f"the source table has no column {name!r} (it has {header})")


def compare_table(where: str, header: list[str], rows: list[list[str]], source: Path, section: str,
                  label: str | None = None) -> None:
    src_header, src_rows = section_table(source.read_text(), section, label)
    for row in rows:
        key = row_key(header, row)
        assert key in src_rows, f"{where}: row {key!r} is not in {source.name} § {section}"
        for name, value in zip(header[1:], row[1:]):
            want = src_rows[key][column_index(src_header, name)].rstrip("*").strip()
            value = value.rstrip("*").strip()  # "3*": fewer runs than an IQM needs, in both
            assert value == want, f"{where}: {key} / {name} quotes {value!r}, {source.name} says {want!r}"


def documents() -> list[Path]:
    return [*DOCS, *NOTES]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- marked tables and quotes -------------------------------------------------------------------------------


MARKED = [(doc, *marker) for doc in documents() for marker in markers(doc.read_text())]


@pytest.mark.parametrize("doc,line,kind,spec", MARKED, ids=[f"{rel(d)}:{n + 1}:{k}" for d, n, k, _ in MARKED])
def test_marked_figures_match_their_source(doc, line, kind, spec):
    text = doc.read_text()
    lines = text.splitlines()
    where = f"{rel(doc)}:{line + 1}"
    below = [t for t in tables(text) if t[0] > line]
    nxt = below[0] if below and all(not lines[k].strip() for k in range(line + 1, below[0][0])) else None
    if kind == "none":
        assert spec.startswith("("), f"{where}: say why these figures have no source"
        return
    if kind == "report":
        path, (section,) = args_of(spec)
        assert nxt, f"{where}: no table follows the marker"
        compare_table(where, nxt[2], nxt[3], ROOT / path, section)
    elif kind == "demo":
        path, names = args_of(spec)
        source = ROOT / path
        if nxt:
            compare_table(where, nxt[2], nxt[3], source, *names)
        else:
            check_printed_table(where, lines[line + 1:], source, names[0])
    elif kind == "quote":
        source = norm((ROOT / spec).read_text())
        quoted = []
        for k in range(line + 1, len(lines)):
            if not lines[k].startswith(">"):
                break
            quoted.append(norm(lines[k].lstrip("> ")))
        assert quoted, f"{where}: no blockquote follows the marker"
        for q in quoted:
            assert q in source, f"{where}: {spec} does not say {q!r}"
    elif kind == "records":
        assert nxt, f"{where}: no table follows the marker"
        path, seed = spec.split()
        check_record_table(where, nxt[2], nxt[3], ROOT / path, int(seed.removeprefix("seed=")))
    elif kind == "lambda":
        assert nxt, f"{where}: no table follows the marker"
        check_lambda_table(where, nxt[2], nxt[3], ROOT / spec)
    elif kind == "bench":
        assert nxt, f"{where}: no table follows the marker"
        check_bench_table(where, nxt[2], nxt[3], ROOT / spec)
    else:
        raise AssertionError(f"{where}: unknown figures marker {kind!r}")


def check_printed_table(where: str, lines: list[str], source: Path, section: str) -> None:
    """The demo's printed table: strategy, runs, IQM [CI], env steps, as the report's table has them."""
    header, src = section_table(source.read_text(), section)
    iqm, steps = next(k for k, h in enumerate(header) if "IQM" in h), header.index("env steps (mean)")
    body = lines[lines.index("```text") + 1: lines.index("```")] if "```text" in lines else []
    row = re.compile(rf"\s+([\w-]+)\s+(\d+)\s+({NUMBER} \[{NUMBER}, {NUMBER}\])\s+({NUMBER})\s*$")
    rows = [m for line in body if (m := row.match(line.replace("−", "-")))]
    assert rows, f"{where}: no printed rows found"
    for m in rows:
        name, runs, interval, env_steps = m.groups()
        assert name in src, f"{where}: {name} is not in {source}"
        got = src[name]
        assert (runs, env_steps) == (got[1].rstrip("*").strip(), got[steps]), f"{where}: {name} differs from {source}"
        printed, reported = (numbers(x) for x in (interval, got[iqm].rstrip("*")))
        # the command line prints one decimal, the report two below 10: equal once rounded as printed
        assert len(printed) == len(reported) and all(abs(a - b) <= 0.05 + 1e-9 for a, b in zip(printed, reported)), \
            f"{where}: {name} prints {interval}, {source} says {got[iqm]}"


def numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(NUMBER, norm(text))]


def shows(text: str, value: float) -> bool:
    """Whether the number ``text`` is ``value`` rounded to as many decimals as it shows."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def check_record_table(where: str, header: list[str], rows: list[list[str]], runs: Path, seed: int) -> None:
    records = {}
    for path in runs.glob("*.json"):
        r = json.loads(path.read_text())
        if r.get("seed") == seed and r.get("status") == "ok":
            records[(short_env(r["env"]), r["strategy"])] = r["final_mean_return"]
    for row in rows:
        for strategy, cell in zip(header[1:], row[1:]):
            shown = re.match(NUMBER, cell)
            assert shown, f"{where}: {row[0]} / {strategy}: no number in {cell!r}"
            key = (row[0], strategy)
            assert key in records, f"{where}: no seed-{seed} record of {strategy} on {row[0]}"
            text = shown.group(0).replace(",", "")
            assert shows(text, records[key]), \
                f"{where}: {row[0]} / {strategy} shows {text}, the record says {records[key]}"


#: ``llmrl bench run --json`` fields by the column headers a bench table may use (seconds unless a factor).
BENCH_COLUMNS = {"wall (s)": ("wall_seconds", 1), "efficiency (%)": ("efficiency", 100),
                 "to threshold (s)": ("seconds_to_threshold", 1),
                 "PPO to threshold (s)": ("ppo_seconds_to_threshold", 1), "× PPO": ("ratio_to_ppo", 1)}


def check_bench_table(where: str, header: list[str], rows: list[list[str]], folder: Path) -> None:
    """Columns from ``BENCH_COLUMNS`` or ``<phase> (s)`` (the run's seconds in that phase); ``-``: null."""
    for row in rows:
        path = folder / f"{row[0].strip('`')}.json"
        assert path.exists(), f"{where}: no benchmark output {rel(path)}"
        out = json.loads(path.read_text())
        for column, cell in zip(header[1:], row[1:]):
            phase = re.fullmatch(r"(\w+) \(s\)", column)
            if column in BENCH_COLUMNS:
                key, factor = BENCH_COLUMNS[column]
                value = out[key]
            elif phase and phase.group(1) in out["phases"]:
                value, factor = out["phases"][phase.group(1)], 1
            else:
                raise AssertionError(f"{where}: a bench table has no column {column!r}")
            if cell == "-":
                assert value is None, f"{where}: {row[0]} / {column} is {value}, not null"
                continue
            text = re.match(NUMBER, cell).group(0).replace(",", "")
            assert value is not None and shows(text, value * factor), \
                f"{where}: {row[0]} / {column} shows {text}, {rel(path)} says {value}"


def check_lambda_table(where: str, header: list[str], rows: list[list[str]], folder: Path) -> None:
    def lines(name: str) -> list[dict]:
        return [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]

    per_item, fixed, fixed_taxi = lines("per-item.jsonl"), lines("fixed-lambda.jsonl"), lines("fixed-lambda-taxi.jsonl")

    def setting(column: str) -> tuple[dict, dict]:
        """(line with the replayed runs, line with the Taxi batch) of a column header."""
        value = float(re.search(NUMBER, column).group(0).replace(",", ""))
        if column.startswith("fixed"):
            pick = [d for d in fixed if float(d["options"]["mom2_weight"]) == value]
            taxi = [d for d in fixed_taxi if float(d["options"]["mom2_weight"]) == value]
        else:
            pick = taxi = [d for d in per_item if float(d["options"]["mom2_weight_per_item"]) == value]
        assert pick and taxi, f"{where}: no output for column {column!r}"
        return pick[0], taxi[0]

    for column_index_, column in enumerate(header[1:], 1):
        runs_line, taxi_line = setting(column)
        replayed = runs_line["runs"]
        for row in rows:
            label, cell = row[0], row[column_index_]
            if label.startswith("Taxi"):
                assert cell == f"{taxi_line['batch']['reliability']:.2f}", f"{where}: Taxi / {column}"
            elif label.startswith("locality"):
                kl = [r["kl_last"] for r in replayed.values()]
                assert cell == f"{min(kl):.4f}-{max(kl):.4f}", f"{where}: locality / {column}: {cell}"
            else:
                m = re.match(r"(\w+) s(\d)(?:-s(\d))?", label)
                assert m, f"{where}: cannot read row {label!r}"
                env, first, last = m.group(1), int(m.group(2)), int(m.group(3) or m.group(2))
                ids = {int(k.split("__")[2][1:]): k for k in replayed if env in k.split("__")[0]}
                every = [ids.get(s) for s in range(first, last + 1)]
                values = [f"{replayed[k]['reliability']:.2f}" if k else "-" for k in every]
                if cell.endswith(" in all"):
                    assert set(values) == {cell.removesuffix(" in all")}, f"{where}: {label} / {column}: {values}"
                else:
                    assert [v.strip() for v in cell.split(",")] == values, f"{where}: {label} / {column}: {values}"


# -- unmarked figures ---------------------------------------------------------------------------------------


def prose(text: str) -> str:
    """The text outside code blocks and HTML comments; marked tables stay in, so their intervals too must be
    ones the document's reports print."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def report_for(doc: Path) -> list[Path]:
    """The reports a document may quote: every report its markers name; besides those, its own beside a
    NOTES file, and for the README and docs the control and Atari reports."""
    named = [ROOT / m.group(2).split()[0] for m in MARKER.finditer(doc.read_text())
             if m.group(1) == "report"]
    if doc.name == "NOTES.md":
        own = doc.parent / "report.md"
        return list(dict.fromkeys([own, *named])) if own.exists() else named
    return list(dict.fromkeys([*REPORTS.values(), *named]))


@pytest.mark.parametrize("doc", documents(), ids=rel)
def test_quoted_intervals_are_in_the_report(doc):
    sources = report_for(doc)
    found = INTERVAL.findall(norm(prose(doc.read_text())))
    if not sources:
        assert not found, f"{rel(doc)} quotes intervals but has no report beside it: {found[:3]}"
        return
    text = " ".join(norm(p.read_text()) for p in sources)
    missing = [f"{v} [{a}, {b}]" for v, a, b in found if f"{v} [{a}, {b}]" not in text]
    assert not missing, f"{rel(doc)} quotes intervals its report does not print: {missing}"


def test_tables_of_strategies_name_their_source():
    """A table with strategy rows or columns quotes an experiment, so it must say from where."""
    unmarked = []
    for doc in documents():
        for start, marker, header, rows in tables(doc.read_text()):
            names = {header[0]} | set(header[1:]) | {r[0] for r in rows}
            numeric = any(re.search(r"\d", c) for r in rows for c in r[1:])
            if numeric and (names & STRATEGY_CELLS or header[0] == "strategy") and marker is None:
                unmarked.append(f"{rel(doc)}:{start + 1}")
    assert not unmarked, f"tables of figures without a <!-- figures: ... --> source: {unmarked}"


def test_atari_per_seed_sequences_are_report_rows():
    notes = ROOT / "reports" / "atari" / "NOTES.md"
    report = REPORTS["atari"].read_text()
    seeds_label = "Final return per seed"
    checked = 0
    for raw in re.split(r"\n(?=- \*\*)", prose(notes.read_text())):
        bullet = norm(raw)
        game = re.match(r"- (\w+):", bullet)
        if not game or f"## ALE/{game.group(1)}-v5" not in report:
            continue
        _, rows = section_table(report, f"ALE/{game.group(1)}-v5", seeds_label)
        table = {tuple(float(c.replace(",", "")) for c in r[1:]) for r in rows.values() if "-" != r[1]}
        for seq in re.findall(rf"{NUMBER}(?: / {NUMBER}){{4}}", bullet):
            values = tuple(float(v.replace(",", "")) for v in seq.split(" / "))
            assert values in table, f"Atari NOTES, {game.group(1)}: {seq} is no row of the report's per-seed table"
            checked += 1
    assert checked, "found no per-seed sequences to check in reports/atari/NOTES.md"


def test_control_edit_metric_sequences_match_the_report():
    """'Reliability: context a / b / ...' in the control notes, per environment, against its edit-metrics table."""
    text = norm(prose((ROOT / "reports" / "control" / "NOTES.md").read_text()))
    report = REPORTS["control"].read_text()
    order = re.search(r"the columns are ((?:[\w-]+ / )+[\w-]+)", text)
    assert order, "the control notes no longer say which environment each column is"
    envs = order.group(1).split(" / ")
    sections = [line[3:] for line in report.splitlines() if line.startswith("## ")]
    full = [next(s for s in sections if s.startswith(e)) for e in envs]
    checked = 0
    for metric, column in (("Reliability", "reliability"), ("Locality KL", "locality KL (nats)")):
        part = re.search(rf"- {metric}[^:]*:(.*?)(?= - [A-Z]|$)", text)
        assert part, f"the control notes have no {metric} bullet"
        for strategy, seq in re.findall(rf"(context|adapter|weights) ({NUMBER}(?: / {NUMBER}){{{len(envs) - 1}}})",
                                        part.group(1)):
            for env, value in zip(full, seq.split(" / ")):
                header, rows = section_table(report, env, "Edit metrics")
                want = rows[strategy][header.index(column)]
                assert float(value) == float(want), f"control notes: {metric} of {strategy} on {env}: {value} vs {want}"
                checked += 1
    assert checked, "found no edit-metric sequences in reports/control/NOTES.md"
