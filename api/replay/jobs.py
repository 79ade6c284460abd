"""Replay jobs in the API process: asyncio tasks, their state in the database.

``async with running_jobs(storage, settings) as jobs`` (the app's lifespan) marks
every job left ``queued`` or ``running`` by an earlier process ``interrupted`` (its
task died with that process; ask again), then :meth:`ReplayJobs.submit` starts
jobs. At a clean stop, the jobs still running are cancelled and marked
``interrupted`` too.

Contracts:

- At most ``api.max_replays`` jobs run at once in a process; :meth:`submit`
  beyond it raises :class:`Busy` and stores nothing.
- A job's progress (rows read, the lead-in before the range included, so it may
  pass the estimate; of the range's rows counted when it started) is
  written at most every :data:`PROGRESS_EVERY_S` seconds and at its end; its
  result (summary with the evidence, events as JSON lines, the CSV report and
  its signature) in one write when it is done, so a job is either done with all
  of it or not done.
- :meth:`cancel` stops a job running here (``cancelled``); an unfinished job of
  another process is marked ``cancelled`` in the database and its process
  stores nothing more for it (every transition checks the status it leaves).
- A job that fails is ``failed`` with the reason (a missing pack version, a
  range touching archived days, a database failure...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from api.replay.report import sign_report
from api.replay.service import ReplayRequest, estimate_rows, run_replay
from smartpark.errors import ConfigError, SmartparkError
from smartpark.settings import Settings
from storage import Storage
from storage.replay_jobs import ReplayJobRow, ReplayJobStore, ReplayReport
from storage.signing import Signer, signer_from_settings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


class Busy(Exception):
    """As many jobs run as the settings allow."""


class NoSigningKey(Exception):
    """The process has no signing key: reports cannot be signed."""


class _EndedElsewhere(Exception):
    """The job was ended by another process (cancelled through it)."""


@dataclass
class ReplayJobs:
    storage: Storage
    max_running: int
    signer: Signer | None
    signer_problem: str | None = None
    store: ReplayJobStore = field(init=False)
    _tasks: dict[str, asyncio.Task[None]] = field(init=False, default_factory=dict)
    _stopping: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.store = ReplayJobStore(self.storage)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def submit(self, request: ReplayRequest, *, key_id: str) -> ReplayJobRow:
        """Store a queued job and start its task (see the module contract)."""
        if self.signer is None:
            raise NoSigningKey(self.signer_problem or "no signing key")
        if len(self._tasks) >= self.max_running:
            raise Busy(f"{len(self._tasks)} replays are running, the most allowed")
        job_id = uuid.uuid4().hex
        row = await self.store.create(job_id, key_id=key_id, request=request.to_json())
        task = asyncio.create_task(self._run(job_id, request, self.signer))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))
        return row

    async def cancel(self, job_id: str) -> bool:
        """Cancel an unfinished job; whether it was unfinished."""
        task = self._tasks.get(job_id)
        if task is None:
            return await self.store.end(job_id, status="cancelled")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def _run(self, job_id: str, request: ReplayRequest, signer: Signer) -> None:
        store = self.store
        last = time.monotonic()

        async def progress(rows: int) -> None:
            nonlocal last
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                if not await store.progress(job_id, rows_read=rows):
                    raise _EndedElsewhere

        try:
            estimate = await estimate_rows(self.storage, request)
            if not await store.start(job_id, rows_estimated=estimate):
                return
            result = await run_replay(self.storage, request, progress=progress)
            signed = sign_report(result, signer)
            await store.finish(
                job_id,
                rows_read=result.evidence.rows,
                summary=result.summary(),
                events="".join(e.to_line() + "\n" for e in result.events),
                report=ReplayReport(signed.csv, signed.signature),
            )
        except asyncio.CancelledError:
            ended = "interrupted" if self._stopping else "cancelled"
            await store.end(job_id, status=ended)
            raise
        except _EndedElsewhere:
            return
        except SmartparkError as exc:
            await store.end(job_id, status="failed", error=str(exc))
        except Exception as exc:
            # A task's failure has no caller to reach: the job must say it failed
            # rather than stay "running" for ever.
            log.exception("replay job %s failed", job_id)
            await store.end(job_id, status="failed",
                            error=f"internal error: {type(exc).__name__}")  # fmt: skip

    async def stop(self) -> None:
        """Cancel the running tasks and mark their jobs interrupted."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_jobs(
    storage: Storage, settings: Settings
) -> AsyncIterator[ReplayJobs]:
    """The process's replay jobs (see the module contract)."""
    signer: Signer | None = None
    problem = None
    try:
        signer = signer_from_settings(settings.signing)
    except ConfigError as exc:
        problem = str(exc)
    jobs = ReplayJobs(storage, settings.api.max_replays, signer, problem)
    gone = await jobs.store.interrupt_unfinished()
    if gone:
        log.warning("replay jobs %s were left unfinished: marked interrupted", gone)
    try:
        yield jobs
    finally:
        await jobs.stop()
