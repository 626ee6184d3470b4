"""Where a reproduction's runs execute: in this process, a local process pool, or Ray tasks.

Whatever the executor, the driver (this process) writes each finished run's file, once and
atomically (:func:`priorlab.harness.runner.write_result`); workers only compute and return the
record. So the result cache means the same everywhere: a rerun, or a driver restarted after a
crash, redoes nothing finished. A failed run is reported on stderr with its traceback and the
others go on; :class:`RunsFailed` names every failed run at the end.

Ray (``pip install 'priorlab[ray]'``): without an address Ray starts embedded on this machine and
stops afterwards. On a cluster, start the head node with ``ray start --head --port 6379``, join
each other machine with ``ray start --address HEAD_IP:6379`` (every node with priorlab installed
at the same commit), then run ``priorlab reproduce ... --executor ray --address HEAD_IP:6379`` on
a node (``--address auto`` there finds the running cluster). Result files are written where the
driver runs. A Ray connection that is already open (``ray.init`` in a notebook) is used as is.
"""

from __future__ import annotations

import logging
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

from priorlab.errors import PriorlabError
from priorlab.harness.runner import Job, compute, write_result

EXECUTORS = ("local", "ray")
EMBEDDED_RAY_CPUS = 2  # the embedded Ray's CPUs unless --jobs asks for more


@dataclass(frozen=True)
class Failure:
    job: Job
    traceback: str

    @property
    def name(self) -> str:
        return f"{self.job.module}:{self.job.arm}:seed{self.job.seed}"


class RunsFailed(PriorlabError):
    """Some runs failed; the others finished and were written."""

    def __init__(self, failures: list[Failure]):
        self.failures = failures
        firsts = "; ".join(f"{f.name} ({f.traceback.strip().splitlines()[-1]})" for f in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} run(s) failed (tracebacks above): {firsts}{more}")


def run_jobs(todo: list[Job], *, executor: str, jobs: int, address: str | None, bar) -> None:
    """Run the jobs on the executor, writing each record as it arrives; ``bar`` counts them."""
    failures: list[Failure] = []

    def finished(job: Job, record: dict | None, error: str | None) -> None:
        if record is not None:
            write_result(job.path, record)
        else:
            failures.append(Failure(job, error))
            print(f"run {failures[-1].name} failed:\n{error}", file=sys.stderr)
        bar.update()

    def finished_text(job: Job, record: dict | None, error: BaseException | None) -> None:
        finished(job, record, None if error is None else _error_text(error))

    if executor == "ray":
        map_on_ray(compute, todo, jobs=jobs, address=address, finished=finished_text)
    elif jobs <= 1:
        for job in todo:
            bar.set_postfix_str(f"{job.module}:{job.arm}:s{job.seed}")
            try:
                record = compute(job)
            except Exception:
                finished(job, None, traceback.format_exc())
            else:
                finished(job, record, None)
    else:
        map_in_pool(compute, todo, jobs=jobs, finished=finished_text)
    if failures:
        raise RunsFailed(failures)


def _error_text(error: BaseException) -> str:
    # a pool worker's traceback rides along as the cause; a RayTaskError's text holds the remote one
    return "".join(traceback.format_exception(error))


def map_in_pool(fn, items: list, *, jobs: int, finished) -> None:
    """``fn(item)`` for every item in ``jobs`` spawned worker processes; ``finished(item, result,
    error)`` is called in this process as each completes (``error``: the exception, else None)."""
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        try:
            for future in as_completed(futures):
                error = future.exception()
                finished(futures[future], None if error else future.result(), error)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise PriorlabError("--executor ray needs Ray: pip install 'priorlab[ray]'") from e
    return ray


def map_on_ray(fn, items: list, *, jobs: int, address: str | None, finished) -> None:
    """As :func:`map_in_pool`, as Ray tasks of one CPU each: embedded here (``max(jobs, 2)`` CPUs)
    unless ``address`` names a cluster or a connection is already open. A task's
    :class:`PriorlabError` reaches ``finished`` as itself; other failures as Ray's error."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        where = {"address": address} if address else {
            "num_cpus": max(jobs, EMBEDDED_RAY_CPUS), "include_dashboard": False}
        ray.init(**where, logging_level=logging.ERROR, log_to_driver=False)
    pending: dict = {}
    try:
        task = ray.remote(num_cpus=1)(fn)  # one torch thread per task, as in the local pool
        pending = {task.remote(item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                cause = e.as_instanceof_cause()
                finished(item, None, cause if isinstance(cause, PriorlabError) else e)
            except ray.exceptions.RayError as e:
                finished(item, None, e)
            else:
                finished(item, result, None)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
