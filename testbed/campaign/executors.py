"""Where runs execute: this process, a local process pool, or a Ray cluster.

Every executor takes the same tasks and yields the same rows as runs finish (in finishing
order), so moving a campaign from a laptop to a cluster changes one option and nothing else.
Runs are deterministic functions of their task, which is why the executors agree row for row.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from testbed.campaign.run import RunTask, errored_row, run_task

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def map_unordered(self, tasks: list[RunTask]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def make_executor(kind: str, workers: int, address: str | None = None) -> Executor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address)
    raise ValueError(f"expected an executor in {EXECUTORS}, got {kind!r}")


def _single_threaded() -> None:
    """Worker initializer: one BLAS/torch thread per run, so N workers use N cores, not N^2."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"


class LocalExecutor:
    """``workers`` spawned processes (spawn: no forked SimPy or Ray state); one worker runs in-process."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, tasks: list[RunTask]) -> Iterator[dict[str, Any]]:
        if self.workers == 1:
            for task in tasks:
                yield run_task(task)
            return
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_single_threaded)
        pending: dict[Future[dict[str, Any]], RunTask] = {self._pool.submit(run_task, t): t for t in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        yield future.result()
                    except Exception as exc:  # noqa: BLE001 - a dead worker (BrokenProcessPool) errs its runs
                        yield errored_row(task, f"worker process failed: {type(exc).__name__}: {exc}")
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Runs on a Ray cluster: ``address`` joins an existing one, otherwise a local one with ``workers`` CPUs.

    Each task asks for one CPU, and Ray sets ``OMP_NUM_THREADS`` to match.

    The cluster's nodes need this package installed (``pip install 'testbed[ray]'``); tasks
    carry the validated scenario, so no spec files need to be shipped.
    """

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'testbed[ray]'") from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        self._remote = ray.remote(num_cpus=1)(run_task)

    def map_unordered(self, tasks: list[RunTask]) -> Iterator[dict[str, Any]]:
        ray = self._ray
        pending = {self._remote.remote(t): t for t in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a dead worker or node errs its run
                        yield errored_row(task, f"ray task failed: {type(exc).__name__}: {exc}")
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
