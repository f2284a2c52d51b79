"""The README is a short door: its commands exist, and it, docs/ and the reports' NOTES link only what is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrl.cli import main
from llmrl.config import EvalConfig, build, load_yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The README's budget: a door, not a lab notebook (docs/ and reports/*/NOTES.md hold the rest).
README_MAX_LINES = 260
LINKING = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "reports").glob("*/NOTES.md"))]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")))
def test_shipped_eval_configs_validate(path):
    cfg = build(EvalConfig, load_yaml(path), source=str(path))
    assert cfg.env and cfg.policy


def test_readme_commands_exist(capsys):
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    commands = set(re.findall(r"\| `llmrl (\w+)", text))
    assert commands, "the README's command table is gone"
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    capsys.readouterr()


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ or a report's NOTES.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return re.findall(r'src="([^"]+)"', text) + re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", LINKING, ids=lambda p: str(p.relative_to(ROOT)))
def test_linked_files_and_anchors_exist(doc):
    if not doc.exists():
        pytest.skip(f"{doc.name} is not written yet")
    problems = []
    for link in links(doc):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{link} (outside the repository)")
        elif not path.exists():
            problems.append(f"{link} (missing)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{link} (no such heading)")
    assert not problems, f"{doc.relative_to(ROOT)} links what the repository lacks: {problems}"


def test_readme_links_the_docs():
    text = README.read_text()
    for page in ("architecture", "policy", "editing-loop", "experiments", "continual", "cards", "models"):
        assert f"docs/{page}.md" in text, f"the README's map of docs/ misses {page}.md"
    for experiment in ("control", "atari"):
        assert f"reports/{experiment}/report.md" in text and f"reports/{experiment}/NOTES.md" in text


@pytest.mark.parametrize("doc", LINKING, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_tests_exist(doc):
    """A guarantee a page says is checked by ``test_file.py::test_name`` (or ``::test_name``, the same file as the
    name before it) is checked by a test that exists."""
    named = 0
    current = None
    for file, name in re.findall(r"`(?:tests/)?(test_\w+\.py)?::(test_\w+)`", doc.read_text()):
        current = file or current
        assert current, f"{doc.name}: ::{name} names no test file before it"
        source = (ROOT / "tests" / current).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{doc.name}: {current}::{name} does not exist"
        named += 1
    if doc.name == "experiments.md":
        assert named >= 10, "the faults table no longer names its tests"
