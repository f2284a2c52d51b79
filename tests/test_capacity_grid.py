"""A capacity grid through ``llmrl ablate`` and ``llmrl report``: cells, records, resuming, the report."""

from __future__ import annotations

import json

import pytest
import yaml

from llmrl.capacity.pool import build_pool, save_pool
from llmrl.cli import main
from tests.helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.json"
    save_pool(path, build_pool(12, seed=0, cards=["CartPole-v1", "MountainCar-v0"], episodes=6, max_steps=40))
    return path


def grid_file(tmp_path, pool, **extra):
    grid = {"capacity": {"methods": ["context", "rag"], "items": [4, 2], "modes": ["batch", "sequential"],
                         "pool": str(pool)},
            "seeds": [0, 1], "models": ["tiny"], "device": "cpu", "dtype": "float32", "out": str(tmp_path / "edits"),
            **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_capacity_grid_runs_resumes_and_reports(tmp_path, pool, capsys):
    path = grid_file(tmp_path, pool)
    assert main(["ablate", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["runs"], summary["ran"], summary["failed"]) == (16, 16, 0)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "edits" / "runs").glob("*.json")}
    assert len(records) == 16 and all(r["kind"] == "capacity" and r["status"] == "ok" for r in records.values())
    one = records["edits__rag__sequential__n4__s1__tiny"]
    assert (one["strategy"], one["capacity"]["items"], one["capacity"]["sequential"]) == ("rag", 4, True)
    assert one["runtime"]["dtype"] == "float32" and one["capacity"]["undo_exact"] is True

    assert main(["ablate", str(path), "--json"]) == 0  # everything is there: nothing runs again
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] == 16
    # a slice of the grid into the same folder: experiment.json keeps both grids, the latest on top
    assert main(["ablate", str(path), "--set", "capacity.methods=[rag]", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] == 8
    experiment = json.loads((tmp_path / "edits" / "experiment.json").read_text())
    assert experiment["config"]["capacity"]["methods"] == ["rag"] and experiment["runs"] == 8
    assert [e["config"]["capacity"]["methods"] for e in experiment["invocations"]] == [["context", "rag"], ["rag"]]

    assert main(["report", str(tmp_path / "edits"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    cell = report["cells"]["sequential/rag/4"]
    seeds = [records[f"edits__rag__sequential__n4__s{s}__tiny"]["capacity"]["reliability"] for s in (0, 1)]
    assert cell["reliability"] == pytest.approx([sum(seeds) / 2, min(seeds), max(seeds)])
    assert cell["seeds"] == 2 and cell["undo_exact"] == 2
    fresh = [records[f"edits__rag__sequential__n4__s{s}__tiny"]["capacity"]["generalization_fresh"] for s in (0, 1)]
    known = [x for x in fresh if x is not None]
    assert cell["generalization_fresh"] == (pytest.approx([sum(known) / len(known), min(known), max(known)])
                                            if known else None)
    text = (tmp_path / "edits" / "report.md").read_text()
    assert text.startswith("# Capacity report: edits") and "The language model ran in float32 in every cell." in text
    assert "## Batch editing" in text and "## Sequential editing" in text
    assert text.index("| context | 2 |") < text.index("| context | 4 |") < text.index("| rag | 2 |")
    assert (tmp_path / "edits" / "capacity_batch.png").stat().st_size > 1000
    assert main(["report", str(tmp_path / "edits")]) == 0  # the table on the terminal
    lines = capsys.readouterr().out.splitlines()
    row = next(x.split() for x in lines if x.split()[:1] == ["sequential/rag/4"])
    assert row[1:3] == ["2", f"{cell['reliability'][0]:.2f}"]
    assert row[-2:] == [f"{cell['erase_ok']}/2", "2/2"]
    assert lines[-1].startswith("report: ") and len(lines) == 2 + len(report["cells"])


def test_a_row_never_pools_two_precisions(tmp_path, pool, capsys):
    """Seeds run in another precision (a grid resumed on another machine with the dtype named) get rows of
    their own."""
    path = grid_file(tmp_path, pool, capacity={"methods": ["rag"], "items": [2], "pool": str(pool)}, seeds=[0])
    assert main(["ablate", str(path)]) == 0
    assert main(["ablate", str(path), "--set", "seeds=[1]", "--set", "dtype=bfloat16"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "edits"), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out.splitlines()[-1])["cells"]
    assert set(cells) == {"batch/rag (bfloat16)/2", "batch/rag (float32)/2"}
    assert all(cell["seeds"] == 1 for cell in cells.values())
    text = (tmp_path / "edits" / "report.md").read_text()
    assert "The language model ran in bfloat16 and float32; each method's rows are split by precision." in text


def test_capacity_grid_errors(tmp_path, pool, capsys):
    bad = grid_file(tmp_path, pool, capacity={"methods": ["nope"], "items": [2]})
    assert "unknown methods nope" in one_error_line(capsys, "ablate", str(bad), "--dry-run")
    loop = grid_file(tmp_path, pool, strategies=["context"])
    assert "a capacity grid does not use strategies" in one_error_line(capsys, "ablate", str(loop), "--dry-run")
    both = grid_file(tmp_path, pool, envs=["CartPole-v1"])
    assert "give one of envs" in one_error_line(capsys, "ablate", str(both), "--dry-run")
    missing = grid_file(tmp_path, pool, capacity={"methods": ["context"], "items": [2], "pool": "nowhere.json"})
    assert "the item pool nowhere.json does not exist" in one_error_line(capsys, "ablate", str(missing), "--dry-run")
    zero = grid_file(tmp_path, pool, capacity={"methods": ["context"], "items": [0]})
    assert "capacity items must be at least 1" in one_error_line(capsys, "ablate", str(zero), "--dry-run")
