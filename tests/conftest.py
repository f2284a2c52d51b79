"""Shared fixtures: the tiny random model for fast tests, the real default for the ``real`` set."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from llmrl.models import LoadedModel, load_model

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite's processes share cores among themselves only, not with whatever else runs here (llmrl.cores):
# thread counts, and so bf16 training sums, are then the same as on a quiet machine.
os.environ["LLMRL_CORES_DIR"] = tempfile.mkdtemp(prefix="llmrl-cores-tests-")


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU ops run far faster on one thread, above all on a shared, loaded CPU (15x seen here).

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads, chosen = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and the CLI, called in-process, keeps it (llmrl.cores.share)
    yield
    torch.set_num_threads(threads)
    if chosen is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = chosen


@pytest.fixture(scope="session")
def real() -> LoadedModel:
    return load_model(None, device="cpu", dtype="float32")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LLMRL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow real-model run; set LLMRL_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
