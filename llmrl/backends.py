"""Where a grid's runs execute: this process, worker processes on this machine, or Ray tasks.

Each backend calls :func:`llmrl.ablate.execute` on every run and yields the
records as runs finish; the driver writes them. Closing a backend's generator
early (the driver could not write a record, or was interrupted) cancels the
runs still queued and stops the ones in flight, whose records could not be
kept anyway.

Worker processes never outlive the driver. The driver names itself in
``LLMRL_DRIVER_PID`` for the workers it spawns, and :func:`die_with_driver`
runs when a worker first imports llmrl (the earliest llmrl code a spawned
process runs): the kernel will SIGKILL the worker when the driver ends, and a
worker whose driver is already gone exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from llmrl.errors import UsageError

if TYPE_CHECKING:
    from llmrl.ablate import RunSpec
    from llmrl.record import RunRecord

DRIVER_VARIABLE = "LLMRL_DRIVER_PID"


def die_with_driver() -> None:
    """In a worker the driver spawned: SIGKILL when the driver ends (Linux), exit now if it already has."""
    driver = os.environ.pop(DRIVER_VARIABLE, None)
    if driver is None:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pool's own shutdown is all there is
    if os.getppid() != int(driver):  # reparented: the driver died before the signal was armed
        os._exit(1)


@contextmanager
def _naming_driver() -> Iterator[None]:
    """Processes spawned in the body inherit the driver's PID; nothing spawned later does."""
    os.environ[DRIVER_VARIABLE] = str(os.getpid())
    try:
        yield
    finally:
        os.environ.pop(DRIVER_VARIABLE, None)


def run_local(specs: list[RunSpec], results: Path, workers: int, threads: int | None) -> Iterator[RunRecord]:
    """Runs in this process (one worker) or in ``workers`` spawned processes; yields records as they finish."""
    from llmrl.ablate import execute

    if workers == 1:
        for spec in specs:
            yield execute(spec, str(results), threads)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_driver)
    finished = False
    try:
        with _naming_driver():  # the pool spawns its workers as the runs are submitted
            pending: set[Future] = {pool.submit(execute, spec, str(results), threads) for spec in specs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    record = future.result()
                except BrokenProcessPool:
                    raise UsageError("a worker process died (killed from outside, perhaps for lack of memory); "
                                     "stopped the experiment, keeping the records written so far (the same "
                                     "command redoes the rest)") from None
                yield record
        finished = True
    finally:
        if not finished:
            # The pool has no public way to stop running calls; its processes are killed so that neither
            # this driver nor the interpreter's exit waits for runs whose records will not be written.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # its manager thread reaps the killed processes


def run_ray(specs: list[RunSpec], results: Path, address: str | None, cpus: float, gpus: float,
            threads: int | None, runtime_env: dict[str, Any] | None = None) -> Iterator[RunRecord]:
    """One Ray task per run with its resource request; records come back to the driver, which writes them."""
    import ray

    from llmrl.ablate import execute

    started_here = not ray.is_initialized()
    if started_here:
        env = dict(runtime_env or {})
        env["env_vars"] = {"TRANSFORMERS_VERBOSITY": "error", **env.get("env_vars", {})}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=env)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute)
    pending = [task.remote(spec, str(results.resolve()), threads or max(1, int(cpus))) for spec in specs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
