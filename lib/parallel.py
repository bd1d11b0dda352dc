r"""Independent jobs in worker processes, with the same results as a plain loop.

:func:`run_jobs` maps a module-level function over a list of jobs, either in this process
(``workers == 1``) or in a pool of ``spawn``-ed processes with one torch thread each. Every job
must be seeded by its own arguments (no global random state), so where it runs does not change
its result: on the CPU the results are bitwise identical to the loop run with one torch thread.

Used by chapter 2's depth comparison (:func:`lib.potts_jobs.train_mlm_jobs`) and chapter 5's trainings
(:func:`lib.sentiment.train_runs`) at the paper scale.
"""

from __future__ import annotations

import multiprocessing
import numbers
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import torch

R = TypeVar("R")

__all__ = ["run_jobs"]

# the ``shared`` object of the running pool, set once per worker by :func:`_init_worker`
_SHARED: list[Any] = []


def _init_worker(blob: bytes) -> None:
    """Initializer of a worker process: one torch thread (the jobs are the parallel unit) and the
    pickled ``shared`` object, which crosses the process boundary once per worker."""
    torch.set_num_threads(1)
    _SHARED[:] = [pickle.loads(blob)]


def _call(fn: Callable[..., Any], job: tuple) -> bytes:
    return pickle.dumps(fn(_SHARED[0], *job), protocol=pickle.HIGHEST_PROTOCOL)


def run_jobs(
    fn: Callable[..., R],
    jobs: Sequence[tuple],
    *,
    shared: Any = None,
    workers: int = 1,
    progress: bool = False,
    desc: str = "jobs",
) -> list[R]:
    r"""Return ``[fn(shared, *job) for job in jobs]``, computed in ``workers`` processes.

    ``fn`` must be importable (a module-level function: it is sent to the workers by name) and
    ``shared`` picklable (data every job reads, sent once per worker). ``workers == 1``: a plain
    loop in this process with its own thread setting. ``workers > 1``: a
    :class:`concurrent.futures.ProcessPoolExecutor` of ``min(workers, len(jobs))`` processes
    started with ``spawn`` (safe from a Jupyter kernel), one torch thread each; the results come
    back pickled, in job order. An exception in a job is raised here and the pool's processes are
    stopped. ``progress`` shows a tqdm bar (``desc``) over completed jobs.

    Raises ``ValueError`` for an empty ``jobs`` or a ``workers`` that is not a positive ``int``,
    ``TypeError`` for a job that is not a tuple.
    """
    if (
        isinstance(workers, bool)
        or not isinstance(workers, numbers.Integral)
        or workers < 1
    ):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence):
        raise TypeError(
            f"jobs must be a sequence of argument tuples, got {type(jobs).__name__}"
        )
    if len(jobs) == 0:
        raise ValueError("jobs is empty: give at least one argument tuple")
    for i, job in enumerate(jobs):
        if not isinstance(job, tuple):
            raise TypeError(
                f"jobs[{i}] must be a tuple of arguments, got {type(job).__name__}"
            )
    bar = None
    if progress:
        from tqdm.std import (
            tqdm,
        )  # a text bar on stderr (the book drops stderr from its pages)

        bar = tqdm(total=len(jobs), desc=desc, mininterval=2.0, leave=False)
    try:
        if workers == 1:
            out = []
            for job in jobs:
                out.append(fn(shared, *job))
                if bar is not None:
                    bar.update()
            return out
        blob = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        results: list[Any] = [None] * len(jobs)
        pool = ProcessPoolExecutor(
            max_workers=min(int(workers), len(jobs)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(blob,),
        )
        try:
            futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                results[futures[fut]] = pickle.loads(fut.result())
                if bar is not None:
                    bar.update()
        except BaseException:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results
    finally:
        if bar is not None:
            bar.close()
