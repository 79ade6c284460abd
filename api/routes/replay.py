"""Replay over HTTP, for regulators and operators: jobs that run the rule core
over stored telemetry, with progress, cancellation, the events as JSON lines and
the signed CSV report (see :mod:`api.replay.service` for what a replay does and
:mod:`api.replay.report` for the report and the command that verifies it).

An enterprise key gets 403. An operator asks for and sees the jobs of its own
park (another park's job is the same 404 as none); a regulator any. Every
request is in the audit log. Jobs run in the API process
(:mod:`api.replay.jobs`): at most ``SMARTPARK_API__MAX_REPLAYS`` at once (429
beyond, with ``Retry-After``); 503 when the process has no signing key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.auth import Caller, caller
from api.problems import Problem, bad_input, not_found
from api.replay.jobs import Busy, NoSigningKey, ReplayJobs
from api.replay.service import ReplayRequest, ReplayScope, parse_proposed
from rules.kinds.base import parse_duration
from smartpark.errors import ConfigError
from smartpark.tenancy import Role
from storage.replay_jobs import ReplayJobRow

router = APIRouter(prefix="/v1", tags=["replay"])
ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
JOB_ID = r"^[0-9a-f]{32}$"


class ReplayCreate(BaseModel):
    """A replay: a range, a scope, and a pack (the version in force at the time by
    default, a recorded version, or a proposed pack's YAML text)."""

    model_config = ConfigDict(extra="forbid")

    park: str = Field(pattern=ID)
    enterprise: str | None = Field(default=None, pattern=ID)
    outlet: str | None = Field(default=None, pattern=ID)
    device: str | None = Field(default=None, pattern=ID)
    start: AwareDatetime
    end: AwareDatetime
    pack: str | None = Field(default=None, pattern=ID, description="the pack's name")
    pack_version: str | None = Field(default=None, min_length=1, max_length=64)
    proposed_pack: str | None = Field(default=None, max_length=1_000_000)
    warmup: str | None = Field(
        default=None, description="read this much before the range, e.g. 6h"
    )


class Progress(BaseModel):
    rows_read: int
    rows_estimated: int | None


class ReplayJob(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    request: dict[str, Any]
    progress: Progress
    summary: dict[str, Any] | None = Field(
        description="when done: events, live_events, new, vanished, changed, rows"
        " and the evidence"
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


def _public(row: ReplayJobRow) -> ReplayJob:
    base = f"/v1/replays/{row.id}"
    links = {"self": base}
    if row.status == "done":
        links |= {
            "events": f"{base}/events",
            "report": f"{base}/report.csv",
            "signature": f"{base}/report.csv.sig",
        }
    return ReplayJob(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]  # the table's CHECK
        request=row.request,
        progress=Progress(rows_read=row.rows_read, rows_estimated=row.rows_estimated),
        summary=row.summary,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        links=links,
    )


async def replay_caller(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.scope.role is Role.ENTERPRISE:
        raise Problem(403, "replay is for regulators and operators")
    return who


ReplayCaller = Annotated[Caller, Depends(replay_caller)]
JobId = Annotated[str, Path(pattern=JOB_ID)]


def _jobs(request: Request) -> ReplayJobs:
    jobs: ReplayJobs | None = getattr(request.app.state, "replays", None)
    if jobs is None:
        raise Problem(503, "replay jobs are not running in this process")
    return jobs


Jobs = Annotated[ReplayJobs, Depends(_jobs)]


def _request(body: ReplayCreate) -> ReplayRequest:
    if body.end <= body.start:
        raise bad_input("body.end", "must be after start")
    if sum(x is not None for x in (body.enterprise, body.outlet, body.device)) > 1:
        raise bad_input("body.enterprise", "give at most one of enterprise, outlet"
                        " or device")  # fmt: skip
    if body.pack_version is not None and body.proposed_pack is not None:
        raise bad_input("body.pack_version", "give a version or a proposed pack")
    if body.proposed_pack is not None:
        try:
            parse_proposed(body.proposed_pack)
        except ConfigError as exc:
            raise bad_input("body.proposed_pack", str(exc)) from None
    warmup = 0
    if body.warmup is not None:
        try:
            warmup = parse_duration(body.warmup)
        except ValueError as exc:
            raise bad_input("body.warmup", str(exc)) from None
    return ReplayRequest(
        ReplayScope(body.park, body.enterprise, body.outlet, body.device),
        body.start, body.end, body.pack, body.pack_version, body.proposed_pack,
        warmup,
    )  # fmt: skip


async def _job(who: Caller, jobs: ReplayJobs, job_id: str) -> ReplayJobRow:
    row = await jobs.store.get(job_id)
    if row is None or not who.scope.allows(row.request["scope"]["park"]):
        raise not_found("replay")
    return row


@router.post(
    "/replays",
    status_code=202,
    summary="Start a replay",
    description="Runs the rule core over the stored telemetry of the range and"
    " scope with the pack asked for; answers at once with the job (202). Follow"
    " `links.self` for progress; when done, the events, the diff against what"
    " ran live and the evidence are in the job and its signed report.",
    response_model=ReplayJob,
)  # fmt: skip
async def create_replay(
    body: ReplayCreate, who: ReplayCaller, jobs: Jobs, response: Response
) -> ReplayJob:
    if not who.scope.allows(body.park):
        raise not_found("park")
    request = _request(body)
    try:
        row = await jobs.submit(request, key_id=who.key.id)
    except Busy as exc:
        raise Problem(429, f"{exc}; try again when one ends",
                      headers={"Retry-After": "30"}) from None  # fmt: skip
    except NoSigningKey as exc:
        raise Problem(503, f"replay reports cannot be signed: {exc}") from None
    await who.audit("replay.create", f"replay:{row.id}", detail=row.request)
    response.headers["Location"] = f"/v1/replays/{row.id}"
    return _public(row)


@router.get("/replays/{job_id}", summary="A replay's status and result",
            response_model=ReplayJob)  # fmt: skip
async def get_replay(job_id: JobId, who: ReplayCaller, jobs: Jobs) -> ReplayJob:
    row = await _job(who, jobs, job_id)
    await who.audit("replay.read", f"replay:{job_id}")
    return _public(row)


@router.delete("/replays/{job_id}", summary="Cancel a replay",
               response_model=ReplayJob)  # fmt: skip
async def cancel_replay(job_id: JobId, who: ReplayCaller, jobs: Jobs) -> ReplayJob:
    row = await _job(who, jobs, job_id)
    if not await jobs.cancel(job_id):
        raise Problem(409, f"replay {job_id} already ended ({row.status})")
    await who.audit("replay.cancel", f"replay:{job_id}")
    ended = await jobs.store.get(job_id)
    assert ended is not None
    return _public(ended)


def _not_done(row: ReplayJobRow) -> Problem:
    return Problem(409, f"replay {row.id} is {row.status}, not done")


@router.get(
    "/replays/{job_id}/events",
    summary="A done replay's events, as JSON lines",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)  # fmt: skip
async def replay_events(
    job_id: JobId, who: ReplayCaller, jobs: Jobs
) -> StreamingResponse:
    row = await _job(who, jobs, job_id)
    text = await jobs.store.events(job_id)
    if text is None:
        raise _not_done(row)
    await who.audit("replay.events", f"replay:{job_id}")

    async def lines() -> Any:
        for line in text.splitlines(keepends=True):
            yield line

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get(
    "/replays/{job_id}/report.csv",
    summary="A done replay's signed CSV report",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)  # fmt: skip
async def replay_report(job_id: JobId, who: ReplayCaller, jobs: Jobs) -> Response:
    row = await _job(who, jobs, job_id)
    report = await jobs.store.report(job_id)
    if report is None:
        raise _not_done(row)
    await who.audit("replay.report", f"replay:{job_id}")
    return Response(
        report.csv,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="replay-{job_id}.csv"'},
    )


@router.get(
    "/replays/{job_id}/report.csv.sig",
    summary="The report's raw Ed25519 signature (64 bytes)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)  # fmt: skip
async def replay_signature(job_id: JobId, who: ReplayCaller, jobs: Jobs) -> Response:
    row = await _job(who, jobs, job_id)
    report = await jobs.store.report(job_id)
    if report is None:
        raise _not_done(row)
    await who.audit("replay.signature", f"replay:{job_id}")
    return Response(
        report.signature,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="replay-{job_id}.csv.sig"'
        },
    )
