"""llmrl installs like a library: a wheel built from the checkout works from any folder, without the checkout.

The wheel goes into a fresh virtual environment that sees the test
environment's dependencies (torch and the rest, through a path file) but not
its editable llmrl, and every command runs from an empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLMRL_CARDS")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                str(ROOT)], cwd=out)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("llmrl-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin folder of a fresh venv holding the wheel's llmrl."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False)
    python = home / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=home)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site.stdout.strip(), "test-deps.pth").write_text("\n".join(deps) + "\n")
    proc = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
               cwd=home)
    assert proc.returncode == 0, proc.stderr
    return home / "bin"


def test_wheel_holds_every_package_and_the_shipped_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "llmrl").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    for folder, package in (("envs", "llmrl/envs"), ("configs", "llmrl/configs")):
        shipped = {f"{package}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*")
                   if p.is_file() and p.suffix in (".py", ".yaml")}
        assert shipped and shipped <= names, shipped - names
    assert "llmrl/data/locality_prompts.json" in names


def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
    where = run([str(installed / "python"), "-c", "import llmrl; print(llmrl.__file__)"], cwd=tmp_path)
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr

    envs = run([str(installed / "llmrl"), "envs", "--json"], cwd=tmp_path)
    assert envs.returncode == 0, envs.stderr
    names = {card["name"] for card in json.loads(envs.stdout.splitlines()[-1])}
    assert {"CartPole-v1", "Taxi-v4", "BabyAI-GoToRedBall-v0", "ALE/Pong-v5"} <= names

    ev = run([str(installed / "llmrl"), "eval", "--env", "CartPole-v1", "--policy", "zero-shot", "--model", "tiny",
              "--episodes", "2", "--max-steps", "5", "--json"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.splitlines()[-1])["lengths"] == [5, 5]

    probe = ("from llmrl.baselines.ppo import load_hyperparameters; from llmrl.metrics import locality_prompts; "
             "from llmrl.envs.atari import AtariCard; import json; "
             "print(json.dumps([load_hyperparameters('CartPole-v1')['n_steps'], len(locality_prompts('eval')), "
             "AtariCard.__module__]))")
    out = run([str(installed / "python"), "-c", probe], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    n_steps, prompts, module = json.loads(out.stdout)
    assert n_steps == 32 and prompts > 200 and module == "llmrl.envs.atari"
