"""Data marks over HTTP: enter a mark, correct or withdraw it, review it, list
what is marked (manual and automatic), and one mark with its whole history.

A mark says a device's data over a period was taken in a state that is not
normal operation (start-up, shutdown, maintenance, calibration, a fault, …); data
in a period marked ``invalid`` is not used to judge an exceedance, to count
compliant hours or in coverage's validity rate. Manual marks are entered by the
enterprise (its own devices) or an operator (its park's devices); a regulator
reviews them (accepted or rejected — a rejected mark's period is judged as if
unmarked) and creates none. Automatic marks are the readings' own HJ 212 flags
(F stopped, M maintenance, S set by hand, D fault, C calibration, T over range,
B communication fault), derived from stored telemetry when listed.

Nothing is edited in place: a correction or a withdrawal is a new mark that
supersedes the old one, with who (the API key id), when and why; the old row and
every review stay readable at ``/v1/marks/{id}``. Every write is in the audit log.

Tenancy as everywhere: another tenant's device or mark is the same 404 as one
that does not exist, by path, body, filter and cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.auth import Caller, Reader, Writer
from api.problems import MEDIA_TYPE, Problem, ProblemBody, bad_input, not_found
from smartpark.catalogue import METRICS
from smartpark.marks import MarkKind, Origin, period_problem, resolve_invalid
from smartpark.tenancy import Role
from storage.marks import (
    AutoMark,
    MarkConflict,
    MarkFilters,
    MarkKey,
    MarkRow,
    NewMark,
    ReviewRow,
)
from storage.registry import DEVICES

router = APIRouter(prefix="/v1", tags=["marks"])
MAX_LIMIT = 1000
LONGEST_MARK = timedelta(days=31)
# Automatic marks: how many one answer lists, and the range derived when none
# is given.
AUTOMATIC_CAP = 1000
AUTOMATIC_DEFAULT_RANGE = timedelta(hours=24)
LONGEST_AUTOMATIC_RANGE = timedelta(days=31)
# Deriving automatic marks reads every reading of the range: at most this many
# times ``api.max_points`` (a window pass reads far faster than it returns).
AUTOMATIC_READINGS_PER_POINT = 10
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # smartpark.wire.valid_id
MAX_MARK_ID = 2**63 - 1

Kind = MarkKind
State = Literal["in_force", "rejected", "superseded", "withdrawn", "withdrawal"]


def _plain(value: str) -> str:
    # PostgreSQL stores no NUL in text: refused here as bad input, not later as a
    # database error.
    if any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in value):
        raise ValueError("control characters are not allowed")
    return value


def _metric(value: str | None) -> str | None:
    if value is not None and value not in METRICS:
        raise ValueError("not a catalogue metric")
    return value


Text = Annotated[str, AfterValidator(_plain)]
Metric = Annotated[str | None, AfterValidator(_metric)]

_PERIOD = {"start": "2026-12-01T06:00:00+08:00", "end": "2026-12-01T09:30:00+08:00"}
_MARK_EXAMPLE: dict[str, Any] = {
    "id": 42, "park": "park-1", "enterprise": "coal-power", "device": "stack-1-cems",
    "metric": None, **_PERIOD, "kind": "startup", "invalid": True,
    "reason": "unit 2 cold start after the annual overhaul",
    "attachment": "DCS log 2026-12-01 unit 2", "origin": "enterprise",
    "created_by": "k3f9a1c2e", "created_at": "2026-12-01T05:40:00Z",
    "supersedes": None, "superseded_by": None, "withdrawn": False,
    "state": "in_force", "review": None, "links": {"self": "/v1/marks/42"},
}  # fmt: skip
_AUTO_EXAMPLE: dict[str, Any] = {
    "origin": "automatic", "park": "park-1", "enterprise": "coal-power",
    "device": "stack-1-cems", "metric": "so2", "data_type": "realtime",
    "flag": "C", "kind": "calibration", "invalid": True,
    "start": "2026-12-01T02:00:00Z", "end": "2026-12-01T02:15:00Z", "readings": 15,
}  # fmt: skip
_REVIEW_EXAMPLE: dict[str, Any] = {
    "id": 7, "mark_id": 42, "verdict": "accepted",
    "reason": "start-up confirmed by the DCS log", "reviewed_by": "k0b1c2d3e",
    "reviewed_at": "2026-12-02T10:00:00Z",
}  # fmt: skip


# -- bodies ---------------------------------------------------------------------------


class MarkCreate(BaseModel):
    """A manual mark: a device's data over ``[start, end)`` (every metric, or
    ``metric``) of ``kind``, with the reason and, optionally, a reference to a
    document kept elsewhere. ``invalid`` defaults to true for every kind but
    ``other``, which must say."""

    device: str = Field(pattern=ID_PATTERN)
    metric: Metric = None
    start: datetime
    end: datetime
    kind: Kind
    reason: Text = Field(min_length=1, max_length=2000)
    attachment: Text | None = Field(default=None, min_length=1, max_length=500)
    invalid: bool | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{
                "device": "stack-1-cems", **_PERIOD, "kind": "startup",
                "reason": "unit 2 cold start after the annual overhaul",
                "attachment": "DCS log 2026-12-01 unit 2",
            }]
        },
    )  # fmt: skip


class Supersede(BaseModel):
    """A correction: the fields of a new mark (device, start, end and kind
    required; the device of the mark it corrects) with the reason for the
    correction. Or a withdrawal: ``withdraw: true`` and the reason, nothing else
    (the mark's period is judged as if unmarked from then on)."""

    withdraw: bool = False
    reason: Text = Field(min_length=1, max_length=2000)
    device: str | None = Field(default=None, pattern=ID_PATTERN)
    metric: Metric = None
    start: datetime | None = None
    end: datetime | None = None
    kind: Kind | None = None
    attachment: Text | None = Field(default=None, min_length=1, max_length=500)
    invalid: bool | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"device": "stack-1-cems", "start": _PERIOD["start"],
                 "end": "2026-12-01T10:30:00+08:00", "kind": "startup",
                 "reason": "the start-up took an hour longer than entered"},
                {"withdraw": True, "reason": "entered for the wrong unit"},
            ]
        },
    )  # fmt: skip

    def correction(self) -> MarkCreate | None:
        """The new mark of a correction, None for a withdrawal; a 422 naming
        every field that does not fit the one asked for."""
        if self.withdraw:
            extra = sorted(self.model_fields_set - {"withdraw", "reason"})
            if extra:
                raise _fields_problem(extra, "not allowed with withdraw: true")
            return None
        required = ("device", "start", "end", "kind")
        missing = [n for n in required if getattr(self, n) is None]
        if missing:
            raise _fields_problem(
                missing, "required for a correction (or send withdraw: true)"
            )
        return MarkCreate.model_construct(
            **self.model_dump(exclude={"withdraw"}, exclude_unset=True)
        )


def _fields_problem(names: list[str], reason: str) -> Problem:
    errors = [{"field": f"body.{n}", "reason": reason} for n in names]
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return Problem(422, detail, errors=errors)


class ReviewCreate(BaseModel):
    verdict: Literal["accepted", "rejected"]
    reason: Text = Field(min_length=1, max_length=2000)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"verdict": "rejected", "reason": "no start-up in the DCS log"}
            ]
        },
    )


# -- answers --------------------------------------------------------------------------


class ReviewOut(BaseModel):
    id: int
    mark_id: int
    verdict: Literal["accepted", "rejected"]
    reason: str
    reviewed_by: str
    reviewed_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [_REVIEW_EXAMPLE]})


class LatestReview(BaseModel):
    verdict: Literal["accepted", "rejected"]
    reviewed_by: str
    reviewed_at: datetime


class Mark(BaseModel):
    """A manual mark as it stands. ``state``: ``in_force`` (current, awaiting
    review or accepted), ``rejected`` (current, latest review rejected it: judged
    as if unmarked), ``superseded`` / ``withdrawn`` (a later mark corrected or
    withdrew it: ``superseded_by``), ``withdrawal`` (this row withdraws the mark
    it ``supersedes``). ``review``: the latest review, null while awaiting one."""

    id: int
    park: str
    enterprise: str
    device: str
    metric: str | None
    start: datetime
    end: datetime
    kind: Kind
    invalid: bool
    reason: str
    attachment: str | None
    origin: Literal["enterprise", "operator"]
    created_by: str
    created_at: datetime
    supersedes: int | None
    superseded_by: int | None
    withdrawn: bool
    state: State
    review: LatestReview | None
    links: dict[str, str]

    model_config = ConfigDict(json_schema_extra={"examples": [_MARK_EXAMPLE]})


class MarkDetail(Mark):
    """The mark, the chain it belongs to (every mark it superseded and every one
    that superseded it, itself included, oldest first) and every review of any
    of them, in the order made."""

    history: list[Mark]
    reviews: list[ReviewOut]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_MARK_EXAMPLE, "history": [_MARK_EXAMPLE],
                          "reviews": [_REVIEW_EXAMPLE]}]
        }
    )  # fmt: skip


class AutomaticMark(BaseModel):
    """A run of readings of one series carrying the same non-N HJ 212 flag:
    from its first reading to the next reading of the series (the range's last
    run: one reporting step after its last reading), clipped to the range."""

    origin: Literal["automatic"] = "automatic"
    park: str
    enterprise: str
    device: str
    metric: str
    data_type: str
    flag: Literal["F", "M", "S", "D", "C", "T", "B"]
    kind: Kind
    invalid: Literal[True] = True
    start: datetime
    end: datetime
    readings: int

    model_config = ConfigDict(json_schema_extra={"examples": [_AUTO_EXAMPLE]})


class AutomaticMarks(BaseModel):
    """The automatic marks of ``[start, end)``, earliest first; ``capped``: there
    were more than ``cap`` (narrow the range or the filters to see the rest);
    ``skipped``: why none were derived (deriving them would read too many
    readings; ask ``origin=automatic`` with a narrower range or filters)."""

    start: datetime
    end: datetime
    items: list[AutomaticMark]
    cap: int
    capped: bool
    skipped: str | None = None


class Marks(BaseModel):
    """Manual marks in force or rejected (neither superseded nor withdrawn),
    latest start first, paged by ``next_cursor``; and, on the first page, the
    automatic marks of the range (null when the filters exclude them)."""

    items: list[Mark]
    next_cursor: str | None
    automatic: AutomaticMarks | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "items": [_MARK_EXAMPLE], "next_cursor": None,
                "automatic": {"start": "2026-12-01T00:00:00Z",
                              "end": "2026-12-02T00:00:00Z",
                              "items": [_AUTO_EXAMPLE], "cap": AUTOMATIC_CAP,
                              "capped": False, "skipped": None},
            }]
        }
    )  # fmt: skip


def _example(doc: dict[str, Any], status: int = 200) -> dict[int | str, Any]:
    return {status: {"content": {"application/json": {"example": doc}}}}


def _conflict(example: str) -> dict[int | str, Any]:
    return {
        409: {
            "description": "Conflict",
            "content": {MEDIA_TYPE: {
                "schema": ProblemBody.model_json_schema(),
                "example": {"type": "about:blank", "title": "Conflict",
                            "status": 409, "detail": example},
            }},
        }
    }  # fmt: skip


MarkId = Annotated[int, Path(ge=1, le=MAX_MARK_ID, description="a mark id")]
IdFilter = Annotated[str | None, Query(pattern=ID_PATTERN)]


def _mark(r: MarkRow) -> Mark:
    review = (
        None if r.review is None or r.reviewed_by is None or r.reviewed_at is None
        else LatestReview(
            verdict=r.review,  # type: ignore[arg-type]  # the table's CHECK
            reviewed_by=r.reviewed_by, reviewed_at=r.reviewed_at,
        )
    )  # fmt: skip
    return Mark(
        id=r.id, park=r.park, enterprise=r.enterprise, device=r.device,
        metric=r.metric, start=r.start_at, end=r.end_at,
        kind=MarkKind(r.kind),
        invalid=r.invalid, reason=r.reason, attachment=r.attachment,
        origin=r.origin,  # type: ignore[arg-type]  # the table's CHECK
        created_by=r.created_by, created_at=r.created_at, supersedes=r.supersedes,
        superseded_by=r.superseded_by, withdrawn=r.withdrawn,
        state=r.state,  # type: ignore[arg-type]  # computed from the CASE
        review=review, links={"self": f"/v1/marks/{r.id}"},
    )  # fmt: skip


def _review(r: ReviewRow) -> ReviewOut:
    return ReviewOut(
        id=r.id, mark_id=r.mark_id,
        verdict=r.verdict,  # type: ignore[arg-type]  # the table's CHECK
        reason=r.reason, reviewed_by=r.reviewed_by, reviewed_at=r.reviewed_at,
    )  # fmt: skip


def _automatic(a: AutoMark) -> AutomaticMark:
    return AutomaticMark(
        park=a.park, enterprise=a.enterprise, device=a.device, metric=a.metric,
        data_type=a.data_type,
        flag=a.flag,  # type: ignore[arg-type]  # only non-N flags are marks
        kind=MarkKind(a.kind),
        start=a.start_at, end=a.end_at, readings=a.readings,
    )  # fmt: skip


def encode_cursor(key: MarkKey) -> str:
    raw = json.dumps([key[0].isoformat(), key[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> MarkKey | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t, mark_id = json.loads(raw)
        when = datetime.fromisoformat(t)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_input("query.cursor", "not a cursor this API returned") from None
    if (
        when.tzinfo is None
        or when.utcoffset() is None
        or type(mark_id) is not int
        or not 1 <= mark_id <= MAX_MARK_ID
    ):
        raise bad_input("query.cursor", "not a cursor this API returned")
    return when, mark_id


def _new_mark(body: MarkCreate) -> NewMark:
    problem = period_problem(body.start, body.end, LONGEST_MARK)
    if problem is not None:
        field, _, reason = problem.partition(": ")
        raise bad_input(f"body.{field}", reason)
    try:
        invalid = resolve_invalid(body.kind, body.invalid)
    except ValueError as exc:
        raise bad_input("body.invalid", str(exc)) from None
    return NewMark(
        device=body.device, metric=body.metric, start_at=body.start,
        end_at=body.end, kind=body.kind.value, invalid=invalid, reason=body.reason,
        attachment=body.attachment,
    )  # fmt: skip


async def _check_device(who: Caller, mark: NewMark) -> None:
    """404 for a device that is not registered within the caller's scope; 422 for
    a metric the device is not registered to report."""
    device = await who.storage.registry.get(DEVICES, who.scope, mark.device)
    if device is None:
        raise not_found("device")
    if mark.metric is not None and device.metrics and mark.metric not in device.metrics:
        raise bad_input(
            "body.metric",
            f"device {device.id} is not registered to report {mark.metric}"
            f" (it reports {', '.join(device.metrics)})",
        )


def _origin(who: Caller) -> str:
    return (
        Origin.OPERATOR.value
        if who.scope.role is Role.OPERATOR
        else Origin.ENTERPRISE.value
    )


def _audit_detail(row: MarkRow) -> dict[str, Any]:
    return {
        "device": row.device, "metric": row.metric,
        "start": row.start_at.isoformat(), "end": row.end_at.isoformat(),
        "kind": row.kind, "invalid": row.invalid, "reason": row.reason,
        "attachment": row.attachment, "supersedes": row.supersedes,
        "withdrawn": row.withdrawn,
    }  # fmt: skip


def _moment(name: str, t: datetime | None) -> None:
    if t is not None and (t.tzinfo is None or t.utcoffset() is None):
        raise bad_input(f"query.{name}", "needs a UTC offset (e.g. +08:00 or Z)")


# -- routes ---------------------------------------------------------------------------


@router.post(
    "/marks",
    status_code=201,
    response_model=Mark,
    summary="Mark a period of a device's data",
    responses=_example(_MARK_EXAMPLE, 201),
)
async def create_mark(who: Writer, body: MarkCreate) -> Mark:
    """A manual mark of a device within your scope (an enterprise: its own
    devices; an operator: its park's). ``start`` and ``end`` carry a UTC offset,
    ``end`` after ``start``, at most 31 days apart. ``invalid`` defaults to true,
    except for kind ``other``, which must say. A regulator key gets 403; another
    tenant's device is the same 404 as an unknown one."""
    mark = _new_mark(body)
    await _check_device(who, mark)
    row = await who.storage.marks.create(
        who.scope, mark, origin=_origin(who), created_by=who.key.id
    )
    if row is None:
        raise not_found("device")
    await who.audit("mark.create", f"mark:{row.id}", detail=_audit_detail(row))
    return _mark(row)


@router.post(
    "/marks/{mark_id}/supersede",
    status_code=201,
    response_model=Mark,
    summary="Correct or withdraw a mark",
    responses={
        **_example({**_MARK_EXAMPLE, "id": 43, "supersedes": 42}, 201),
        **_conflict("mark 42 is already superseded by mark 43"),
    },
)
async def supersede_mark(who: Writer, mark_id: MarkId, body: Supersede) -> Mark:
    """A correction: a new mark (the same body as a new one, for the same device)
    that supersedes mark ``mark_id``; or ``{"withdraw": true, "reason": …}``: a
    withdrawal (a row with ``withdrawn`` true copying the old period). The old
    mark is never changed; both stay in its history. A mark already superseded
    is a 409 naming the mark that superseded it. An enterprise corrects only marks
    its own people entered (an operator's mark is the operator's to correct)."""
    correction = body.correction()
    mark = None if correction is None else _new_mark(correction)
    old = await who.storage.marks.get(who.scope, mark_id)
    if old is None:
        raise not_found("mark")
    if who.scope.role is Role.ENTERPRISE and old.origin != Origin.ENTERPRISE.value:
        raise Problem(
            403, f"mark {mark_id} was entered by an operator; only an operator"
            " may correct or withdraw it",
        )  # fmt: skip
    if mark is not None:
        if mark.device != old.device:
            raise bad_input(
                "body.device",
                f"a correction keeps the device of the mark it corrects"
                f" ({old.device}); withdraw mark {mark_id} and enter a new mark",
            )
        await _check_device(who, mark)
    try:
        row = await who.storage.marks.supersede(
            who.scope, mark_id, mark, reason=body.reason, origin=_origin(who),
            created_by=who.key.id,
        )  # fmt: skip
    except MarkConflict as exc:
        raise Problem(409, str(exc)) from None
    if row is None:
        raise not_found("mark")
    action = "mark.withdraw" if mark is None else "mark.supersede"
    await who.audit(action, f"mark:{mark_id}", detail=_audit_detail(row))
    return _mark(row)


@router.post(
    "/marks/{mark_id}/review",
    status_code=201,
    response_model=ReviewOut,
    summary="Review a mark (regulators)",
    responses={
        **_example(_REVIEW_EXAMPLE, 201),
        **_conflict("mark 42 is already superseded by mark 43"),
    },
)
async def review_mark(who: Reader, mark_id: MarkId, body: ReviewCreate) -> ReviewOut:
    """A regulator accepts or rejects a current mark, with the reason. A rejected
    mark's period is judged as if unmarked; a later review replaces the verdict
    (every review stays in the history). Other roles get 403; a mark superseded
    or withdrawn is a 409 (review the current one)."""
    if who.scope.role is not Role.REGULATOR:
        raise Problem(403, "only a regulator reviews marks")
    try:
        row = await who.storage.marks.review(
            who.scope, mark_id, verdict=body.verdict, reason=body.reason,
            by=who.key.id,
        )  # fmt: skip
    except MarkConflict as exc:
        raise Problem(409, str(exc)) from None
    if row is None:
        raise not_found("mark")
    await who.audit(
        "mark.review", f"mark:{mark_id}",
        detail={"verdict": body.verdict, "reason": body.reason},
    )  # fmt: skip
    return _review(row)


@router.get(
    "/marks",
    response_model=Marks,
    summary="List marks",
    responses=_example({"items": [_MARK_EXAMPLE], "next_cursor": None,
                        "automatic": None}),
)  # fmt: skip
async def list_marks(
    who: Reader,
    *,
    enterprise: IdFilter = None,
    device: IdFilter = None,
    metric: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z0-9_]{1,64}$",
            description="marks of this metric and marks of every metric",
        ),
    ] = None,
    kind: Kind | None = None,
    origin: Annotated[
        Literal["enterprise", "operator", "automatic"] | None,
        Query(description="who made it; automatic: the readings' own flags"),
    ] = None,
    review: Annotated[
        Literal["pending", "accepted", "rejected"] | None,
        Query(description="the latest review of a manual mark"),
    ] = None,
    start: Annotated[
        datetime | None,
        Query(alias="from", description="marks overlapping [from, to) (offset)"),
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="exclusive (offset)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the last page")
    ] = None,
) -> Marks:
    """Manual marks within your scope that are current (neither superseded nor
    withdrawn; rejected ones with their review), latest start first, and on the
    first page the automatic marks: runs of the same non-N HJ 212 flag in
    stored readings, over ``[from, to)`` (default: the last 24 hours; at most 31
    days), at most 1000 (``capped`` says when there were more). Deriving them
    reads the range's readings: beyond ten times the API's point limit (estimated
    from the registry's intervals) they are ``skipped`` with the reason, or a
    422 with ``origin=automatic``. Filters narrow the scope, never widen it;
    ``origin=automatic`` lists only automatic marks, ``origin=enterprise|operator``
    or ``review`` only manual ones."""
    _moment("from", start)
    _moment("to", end)
    if metric is not None and metric not in METRICS:
        raise bad_input("query.metric", "not a catalogue metric")
    if start is not None and end is not None and end <= start:
        raise bad_input("query.to", "must be after from")
    after = decode_cursor(cursor)
    kind_value = None if kind is None else kind.value
    items: list[Mark] = []
    next_cursor = None
    if origin != "automatic":
        filters = MarkFilters(
            enterprise=enterprise, device=device, metric=metric, kind=kind_value,
            origin=origin, review=review, since=start, until=end,
        )  # fmt: skip
        rows = await who.storage.marks.find(
            who.scope, filters, limit=limit + 1, after=after
        )
        more = len(rows) > limit
        rows = rows[:limit]
        items = [_mark(r) for r in rows]
        if more:
            next_cursor = encode_cursor((rows[-1].start_at, rows[-1].id))
    automatic = None
    if after is None and origin in {None, "automatic"} and review is None:
        automatic = await _automatic_marks(
            who, start, end, enterprise=enterprise, device=device, metric=metric,
            kind=kind_value, explicit=origin == "automatic",
        )  # fmt: skip
    return Marks(items=items, next_cursor=next_cursor, automatic=automatic)


async def _automatic_marks(
    who: Caller, start: datetime | None, end: datetime | None, *,
    enterprise: str | None, device: str | None, metric: str | None,
    kind: str | None, explicit: bool,
) -> AutomaticMarks:  # fmt: skip
    try:
        if end is None:
            now = datetime.fromtimestamp(who.storage.clock() / 1000, UTC)
            end = now if start is None else start + AUTOMATIC_DEFAULT_RANGE
        if start is None:
            start = end - AUTOMATIC_DEFAULT_RANGE
    except OverflowError:
        raise bad_input(
            "query.from", "too close to the end of the calendar; give from and to"
        ) from None
    if end - start > LONGEST_AUTOMATIC_RANGE:
        raise bad_input(
            "query.to",
            "automatic marks are derived over at most 31 days; narrow from/to,"
            " or ask origin=enterprise or origin=operator for manual marks only",
        )
    readings = await who.storage.marks.automatic_estimate(
        who.scope, start=start, end=end, enterprise=enterprise, device=device,
        metric=metric,
    )  # fmt: skip
    most = AUTOMATIC_READINGS_PER_POINT * who.settings.api.max_points
    if readings > most:
        why = (
            f"deriving automatic marks would read about {readings} readings, more"
            f" than the limit of {most}: narrow from/to, or name an enterprise,"
            " a device or a metric"
        )
        if explicit:
            raise bad_input("query.to", why)
        return AutomaticMarks(
            start=start, end=end, items=[], cap=AUTOMATIC_CAP, capped=False,
            skipped=why + " (and ask origin=automatic)",
        )  # fmt: skip
    rows = await who.storage.marks.automatic(
        who.scope, start=start, end=end, enterprise=enterprise, device=device,
        metric=metric, kind=kind, limit=AUTOMATIC_CAP + 1,
    )  # fmt: skip
    return AutomaticMarks(
        start=start, end=end, items=[_automatic(a) for a in rows[:AUTOMATIC_CAP]],
        cap=AUTOMATIC_CAP, capped=len(rows) > AUTOMATIC_CAP,
    )  # fmt: skip


@router.get(
    "/marks/{mark_id}",
    response_model=MarkDetail,
    summary="One mark with its history and reviews",
    responses=_example({**_MARK_EXAMPLE, "history": [_MARK_EXAMPLE],
                        "reviews": [_REVIEW_EXAMPLE]}),
)  # fmt: skip
async def get_mark(who: Reader, mark_id: MarkId) -> MarkDetail:
    """The mark (whatever its state), every mark of its chain — those it
    superseded and those that superseded it, oldest first — and every review of
    any of them: who, when, why."""
    chain, reviews = await who.storage.marks.history(who.scope, mark_id)
    row = next((m for m in chain if m.id == mark_id), None)
    if row is None:
        raise not_found("mark")
    return MarkDetail(
        **_mark(row).model_dump(), history=[_mark(m) for m in chain],
        reviews=[_review(r) for r in reviews],
    )  # fmt: skip
