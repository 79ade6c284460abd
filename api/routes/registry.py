"""The registry over HTTP: parks, enterprises, outlets and devices, and an
enterprise's edge agent configuration.

Every route hands the caller's scope to :mod:`storage.registry`, which applies
it in SQL: another tenant's id (by path, filter, body or cursor) is the same 404
(or the same empty page) as an id that does not exist. Reads are open to every
role within its scope; registry writes are operators' (a regulator gets 403 from
:data:`~api.auth.Writer`, an enterprise 403 here; an operator of one park writes
within it, an all-parks operator also creates parks). Every write is audited.
Rows are retired (``POST /{id}/retire``), never deleted; lists show active rows,
``?retired=true`` the retired ones. Pages are keyed on id by an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from api import edgeconfig
from api.auth import Caller, Reader, Writer
from api.problems import MEDIA_TYPE, Problem, ProblemBody, bad_input, not_found
from smartpark import catalogue, kpi, wire
from smartpark.catalogue import check_metric
from smartpark.coverage import check_data_types
from smartpark.tenancy import Role
from storage.registry import (
    DEVICES,
    ENTERPRISES,
    OUTLETS,
    PARKS,
    DeviceRow,
    EnterpriseRow,
    ListFilters,
    OutletRow,
    ParentNotFound,
    ParkRow,
    RegistryConflict,
)

router = APIRouter(prefix="/v1", tags=["registry"])
MAX_LIMIT = 1000
MAX_YAML_BYTES = 1 << 20


def _problem_doc(status: int, title: str, example: str) -> dict[str, Any]:
    return {
        "description": title,
        "content": {MEDIA_TYPE: {
            "schema": ProblemBody.model_json_schema(),
            "example": {"type": "about:blank", "title": title, "status": status,
                        "detail": example},
        }},
    }  # fmt: skip


_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _problem_doc(409, "Conflict", "body.id: device id 'd1' is already registered")
}


def _example(value: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": value}}}, **_CONFLICT}


# -- values ---------------------------------------------------------------------------


def _check_id(value: str) -> str:
    if not wire.valid_id(value):
        raise ValueError(
            "invalid id: 1-64 characters of A-Z a-z 0-9 _ . : -, starting with a"
            " letter or digit"
        )
    return value


def _check_text(value: str) -> str:
    if not value.isprintable():
        raise ValueError("control characters are not allowed")
    return value


@cache
def _zones() -> frozenset[str]:
    # "localtime" is whatever the server's clock is set to, not a place.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def _check_timezone(value: str) -> str:
    # Not ZoneInfo(value) alone: ZoneInfo("Asia") raises IsADirectoryError.
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r} (an IANA name: Asia/Shanghai)")
    return value


def _unique(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("an entry is listed twice")
    return value


def _check_mn(value: str) -> str:
    if set(";,=&") & set(value) or " " in value or not value.isprintable():
        raise ValueError("an MN may not contain ; , = & or spaces")
    return value


Id = Annotated[str, AfterValidator(_check_id)]
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True),
    AfterValidator(_check_text),
]
TimeZone = Annotated[
    str, StringConstraints(max_length=64), AfterValidator(_check_timezone)
]
Metric = Annotated[str, StringConstraints(max_length=64), AfterValidator(check_metric)]
Metrics = Annotated[
    list[Metric], Field(min_length=1, max_length=200), AfterValidator(_unique)
]
Mn = Annotated[
    str, StringConstraints(min_length=1, max_length=24), AfterValidator(_check_mn)
]
Protocol = Literal["modbus_tcp", "modbus_rtu", "hj212"]
Kind = Literal["stack", "wastewater_outfall"]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Limit = Annotated[float, Field(gt=0, allow_inf_nan=False)]
ReferenceO2 = Annotated[float, Field(ge=0, lt=21, allow_inf_nan=False)]
IntervalS = Annotated[int, Field(ge=1, le=86400)]
DataTypes = Annotated[
    dict[str, int],
    AfterValidator(check_data_types),
    Field(
        description="HJ 212 data type -> reporting interval (s) the device reports,"
        ' e.g. {"realtime": 30, "minute": 600, "hour": 3600, "day": 86400};'
        " empty: real-time every interval_s (what coverage expects)"
    ),
]


class _In(BaseModel):
    # An unknown field is refused (422 naming it), never silently ignored.
    model_config = ConfigDict(extra="forbid")


class Quota(_In):
    """Amounts per period; an absent period has no quota."""

    day: Amount | None = None
    month: Amount | None = None
    year: Amount | None = None


def _quota(value: Quota | dict[str, float] | None) -> dict[str, float]:
    if isinstance(value, Quota):
        return value.model_dump(exclude_none=True)
    return dict(value or {})


def _column(value: Any) -> Any:
    """A body value as its registry column holds it (objects as JSON)."""
    if isinstance(value, Quota):
        return _quota(value)
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return value


# -- parks ------------------------------------------------------------------------


def _check_grid_region(value: str) -> str:
    regions = kpi.shipped().grid.regions
    if value not in regions:
        raise ValueError(f"unknown grid region {value!r} (one of {sorted(regions)})")
    return value


GridRegion = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_check_grid_region),
    Field(description="region of the grid CO2 factor (absent: national)"),
]


class ParkCreate(_In):
    id: Id
    name: Text
    timezone: TimeZone = Field(description="IANA time zone, e.g. Asia/Shanghai")
    grid_region: GridRegion | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "park-1", "name": "Binhai Chemical Park", "timezone": "Asia/Shanghai"}
    ]})  # fmt: skip


class ParkUpdate(_In):
    name: Text | None = None
    timezone: TimeZone | None = None
    grid_region: GridRegion | None = None


class ParkOut(BaseModel):
    id: str
    name: str
    timezone: str
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    grid_region: str | None = None


_STAMPS_EX = {"created_at": "2026-12-01T08:00:00Z",
              "updated_at": "2026-12-01T08:00:00Z", "retired_at": None}  # fmt: skip
PARK_EX = {"id": "park-1", "name": "Binhai Chemical Park",
           "timezone": "Asia/Shanghai", **_STAMPS_EX}  # fmt: skip


class Parks(BaseModel):
    items: list[ParkOut]
    next_cursor: str | None


# -- enterprises ------------------------------------------------------------------


def _check_pattern(value: str) -> str:
    if not wire.valid_id(value.replace("*", "x").replace("?", "x")):
        raise ValueError("a device id or a pattern of one with * and ?")
    return value


DevicePattern = Annotated[str, StringConstraints(max_length=64),
                          AfterValidator(_check_pattern)]  # fmt: skip
DevicePatterns = Annotated[
    list[DevicePattern], Field(min_length=1, max_length=100), AfterValidator(_unique)
]


def _check_product_metric(value: str) -> str:
    names = sorted(
        n for n, m in catalogue.METRICS.items()
        if m.domain is catalogue.Domain.PRODUCTION
        and m.kind is catalogue.Kind.COUNTER
    )  # fmt: skip
    if value not in names:
        raise ValueError(f"not a production counter (one of {names})")
    return value


def _check_indicator(value: str) -> str:
    known = kpi.shipped().norm.indicators
    if value not in known:
        raise ValueError(f"unknown indicator {value!r} (one of {sorted(known)})")
    return value


class Product(_In):
    """What the enterprise makes, for unit-product energy and water per output."""

    name: Text
    metric: Annotated[
        str, StringConstraints(max_length=64), AfterValidator(_check_product_metric)
    ] = "production_mass"
    devices: DevicePatterns | None = Field(
        default=None,
        description="device ids or patterns (* ?) of the product's meters; absent:"
        " every device of the enterprise reporting the metric",
    )
    indicator: Annotated[str, StringConstraints(max_length=64),
                         AfterValidator(_check_indicator)] | None = Field(
        default=None, description="the GB 21346 indicator the product is judged on"
    )  # fmt: skip

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "aluminium liquid", "metric": "production_mass",
         "devices": ["cast-*"], "indicator": "aluminium_liquid_ac_power"}
    ]})  # fmt: skip


class EnterpriseCreate(_In):
    id: Id
    park: Id
    name: Text
    industry: Text | None = None
    permits: Annotated[list[Text], Field(max_length=50)] = []
    energy_quota_tce: Quota = Quota()
    water_quota_m3: Quota = Quota()
    quotas_from: date | None = None
    product: Product | None = None
    electricity_meters: DevicePatterns | None = Field(
        default=None,
        description="purchased electricity meters (ids or patterns); absent: every"
        " device reporting active_energy",
    )

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "coal-power", "park": "park-1", "name": "Binhai Power Co.",
         "industry": "thermal power", "permits": ["91320000MA1Y2K3L4M-001P"],
         "energy_quota_tce": {"day": 850.0, "year": 300000.0},
         "water_quota_m3": {"day": 12000.0}, "quotas_from": "2026-01-01"}
    ]})  # fmt: skip


class EnterpriseUpdate(_In):
    name: Text | None = None
    industry: Text | None = None
    permits: Annotated[list[Text], Field(max_length=50)] | None = None
    energy_quota_tce: Quota | None = None
    water_quota_m3: Quota | None = None
    quotas_from: date | None = None
    product: Product | None = None
    electricity_meters: DevicePatterns | None = None


class EnterpriseOut(BaseModel):
    id: str
    park: str
    name: str
    industry: str | None
    permits: list[str]
    energy_quota_tce: dict[str, float]
    water_quota_m3: dict[str, float]
    quotas_from: date | None
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    product: dict[str, Any] | None = None
    electricity_meters: list[str] | None = None


ENTERPRISE_EX = {
    "id": "coal-power", "park": "park-1", "name": "Binhai Power Co.",
    "industry": "thermal power", "permits": ["91320000MA1Y2K3L4M-001P"],
    "energy_quota_tce": {"day": 850.0, "year": 300000.0},
    "water_quota_m3": {"day": 12000.0}, "quotas_from": "2026-01-01", **_STAMPS_EX,
}  # fmt: skip


class Enterprises(BaseModel):
    items: list[EnterpriseOut]
    next_cursor: str | None


# -- outlets ----------------------------------------------------------------------


def _limits(value: dict[str, float]) -> dict[str, float]:
    for metric in value:
        check_metric(metric)
    return value


Limits = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Limit],
    Field(max_length=100),
    AfterValidator(_limits),
]


class OutletCreate(_In):
    id: Id
    enterprise: Id
    kind: Kind
    name: Text
    reference_o2: ReferenceO2 | None = Field(
        default=None, description="reference O2 in % (stacks only)"
    )
    limits: Limits = Field(
        default={}, description="permit limit per metric, in the catalogue unit"
    )

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "stack-1", "enterprise": "coal-power", "kind": "stack",
         "name": "Unit 1 stack", "reference_o2": 6.0,
         "limits": {"so2_corrected": 35.0, "nox_corrected": 50.0}}
    ]})  # fmt: skip


class OutletUpdate(_In):
    name: Text | None = None
    reference_o2: ReferenceO2 | None = None
    limits: Limits | None = None


class OutletOut(BaseModel):
    id: str
    park: str
    enterprise: str
    kind: str
    name: str
    reference_o2: float | None
    limits: dict[str, float]
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None


OUTLET_EX = {
    "id": "stack-1", "park": "park-1", "enterprise": "coal-power", "kind": "stack",
    "name": "Unit 1 stack", "reference_o2": 6.0,
    "limits": {"so2_corrected": 35.0, "nox_corrected": 50.0}, **_STAMPS_EX,
}  # fmt: skip


class Outlets(BaseModel):
    items: list[OutletOut]
    next_cursor: str | None


# -- devices ----------------------------------------------------------------------


class DeviceCreate(_In):
    id: Id
    enterprise: Id
    outlet: Id | None = None
    protocol: Protocol
    interval_s: IntervalS = Field(description="expected reporting interval")
    metrics: Metrics
    mn: Mn | None = Field(default=None, description="HJ 212 MN (protocol hj212)")
    data_types: DataTypes = {}

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "stack-1-cems", "enterprise": "coal-power", "outlet": "stack-1",
         "protocol": "hj212", "interval_s": 60,
         "metrics": ["so2", "so2_corrected", "o2"], "mn": "88888880000001"}
    ]})  # fmt: skip


class DeviceUpdate(_In):
    outlet: Id | None = None
    protocol: Protocol | None = None
    interval_s: IntervalS | None = None
    metrics: Metrics | None = None
    mn: Mn | None = None
    data_types: DataTypes | None = None


class DeviceOut(BaseModel):
    id: str
    park: str
    enterprise: str
    outlet: str | None
    protocol: str
    interval_s: int
    metrics: list[str]
    mn: str | None
    data_types: dict[str, int]
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None


DEVICE_EX = {
    "id": "stack-1-cems", "park": "park-1", "enterprise": "coal-power",
    "outlet": "stack-1", "protocol": "hj212", "interval_s": 60,
    "metrics": ["so2", "so2_corrected", "o2"], "mn": "88888880000001",
    "data_types": {"realtime": 60, "hour": 3600}, **_STAMPS_EX,
}  # fmt: skip


class Devices(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class ImportReport(BaseModel):
    created: list[str]
    updated: list[str]
    unchanged: list[str]


# -- helpers --------------------------------------------------------------------------

PathId = Annotated[str, "the id in the path"]
Retired = Annotated[
    bool, Query(description="true: the retired rows instead of the active ones")
]
PageSize = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="next_cursor of the last page")
]
IdFilter = Annotated[str | None, Query(max_length=64)]


def _path_id(value: str) -> str:
    if not wire.valid_id(value):
        raise bad_input("path.id", "invalid id: 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


def _filter(name: str, value: str | None) -> str | None:
    if value is not None and not wire.valid_id(value):
        raise bad_input(f"query.{name}", "invalid id")
    return value


def _encode_cursor(kind: str, last: str) -> str:
    raw = json.dumps([kind, last], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(kind: str, text: str | None) -> str | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad_input("query.cursor", "not a cursor this API returned") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or value[0] != kind
        or not isinstance(value[1], str)
        or not wire.valid_id(value[1])
    ):
        raise bad_input("query.cursor", "not a cursor of this list")
    return value[1]


def _operator(who: Caller) -> None:
    if who.scope.role is not Role.OPERATOR:
        raise Problem(403, "registry writes are operators'; this key is read-only here")


def _changes(body: BaseModel, nullable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields the request set; null only where the field may be cleared."""
    out: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None and name not in nullable:
            raise bad_input(f"body.{name}", "may not be null")
        out[name] = _column(value)
    return out


@contextmanager
def _refusals(id_at: str = "body.id") -> Iterator[None]:
    """Conflicts as 409 naming the field (the row's own id at ``id_at``), an
    outlet not of the enterprise (or not the caller's) as its 404."""
    try:
        yield
    except RegistryConflict as exc:
        field = (
            id_at if exc.field == "id"
            else exc.field if exc.field.startswith("body")
            else f"body.{exc.field}"
        )  # fmt: skip
        raise Problem(
            409,
            f"{field}: {exc.reason}",
            errors=[{"field": field, "reason": exc.reason}],
        ) from None
    except ParentNotFound as exc:
        raise not_found(exc.what) from None


def _audit_detail(body: BaseModel) -> dict[str, Any]:
    detail: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    return detail


# -- parks ----------------------------------------------------------------------------


@router.post(
    "/parks", status_code=201, response_model=ParkOut,
    summary="Register a park",
    description="All-parks operators only. The time zone is an IANA name; days,"
    " weeks and months of the park's aggregates start at its local midnight.",
    responses={201: {"content": {"application/json": {"example": PARK_EX}}},
               **_CONFLICT},
)  # fmt: skip
async def create_park(body: ParkCreate, who: Writer) -> ParkOut:
    _operator(who)
    if who.scope.park is not None:
        raise Problem(403, "only an operator of every park registers parks")
    with _refusals():
        row = await who.storage.registry.create_park(who.scope, body.model_dump())
    await who.audit(
        "registry.park.create", f"park:{row.id}", detail=_audit_detail(body)
    )
    return ParkOut.model_validate(row, from_attributes=True)


@router.get(
    "/parks", response_model=Parks, summary="List parks",
    description="The parks within the key's scope (an enterprise sees its own park).",
    responses=_example({"items": [PARK_EX], "next_cursor": None}),
)  # fmt: skip
async def list_parks(
    *,
    who: Reader,
    retired: Retired = False,
    limit: PageSize = 100,
    cursor: Cursor = None,
) -> Parks:
    after = _decode_cursor("parks", cursor)
    rows = await who.storage.registry.find(
        PARKS, who.scope, ListFilters(retired=retired), after=after, limit=limit + 1
    )
    items, more = rows[:limit], len(rows) > limit
    return Parks(
        items=[ParkOut.model_validate(r, from_attributes=True) for r in items],
        next_cursor=_encode_cursor("parks", items[-1].id) if more else None,
    )


async def _one_park(who: Caller, id_: str) -> ParkRow:
    row = await who.storage.registry.get(PARKS, who.scope, _path_id(id_))
    if row is None:
        raise not_found("park")
    return row


@router.get(
    "/parks/{id}", response_model=ParkOut, summary="One park",
    description="A park within the key's scope, retired or not.",
    responses=_example(PARK_EX),
)  # fmt: skip
async def get_park(id: PathId, who: Reader) -> ParkOut:
    return ParkOut.model_validate(await _one_park(who, id), from_attributes=True)


@router.patch(
    "/parks/{id}", response_model=ParkOut, summary="Update a park",
    description="Name and time zone; other fields are refused.",
    responses=_example(PARK_EX),
)  # fmt: skip
async def update_park(id: PathId, body: ParkUpdate, who: Writer) -> ParkOut:
    _operator(who)
    changes = _changes(body, frozenset({"grid_region"}))
    with _refusals("path.id"):
        row = await who.storage.registry.update(PARKS, who.scope, _path_id(id), changes)
    if row is None:
        raise not_found("park")
    await who.audit("registry.park.update", f"park:{id}", detail=_audit_detail(body))
    return ParkOut.model_validate(row, from_attributes=True)


@router.post(
    "/parks/{id}/retire", response_model=ParkOut, summary="Retire a park",
    description="Idempotent. Refused (409) while the park has active enterprises.",
    responses=_example({**PARK_EX, "retired_at": "2026-12-02T08:00:00Z"}),
)  # fmt: skip
async def retire_park(id: PathId, who: Writer) -> ParkOut:
    _operator(who)
    with _refusals("path.id"):
        row = await who.storage.registry.retire(PARKS, who.scope, _path_id(id))
    if row is None:
        raise not_found("park")
    await who.audit("registry.park.retire", f"park:{id}")
    return ParkOut.model_validate(row, from_attributes=True)


# -- enterprises ----------------------------------------------------------------------


@router.post(
    "/enterprises", status_code=201, response_model=EnterpriseOut,
    summary="Register an enterprise",
    description="In an active park of the operator's scope (else 404 park).",
    responses={201: {"content": {"application/json": {"example": ENTERPRISE_EX}}},
               **_CONFLICT},
)  # fmt: skip
async def create_enterprise(body: EnterpriseCreate, who: Writer) -> EnterpriseOut:
    _operator(who)
    values = {k: _column(v) for k, v in body}
    with _refusals():
        row = await who.storage.registry.create_enterprise(who.scope, values)
    if row is None:
        raise not_found("park")
    await who.audit(
        "registry.enterprise.create", f"enterprise:{row.id}", detail=_audit_detail(body)
    )
    return EnterpriseOut.model_validate(row, from_attributes=True)


@router.get(
    "/enterprises", response_model=Enterprises, summary="List enterprises",
    description="Within the key's scope; filter by park.",
    responses=_example({"items": [ENTERPRISE_EX], "next_cursor": None}),
)  # fmt: skip
async def list_enterprises(
    *, who: Reader, park: IdFilter = None, retired: Retired = False,
    limit: PageSize = 100, cursor: Cursor = None,
) -> Enterprises:  # fmt: skip
    after = _decode_cursor("enterprises", cursor)
    f = ListFilters(park=_filter("park", park), retired=retired)
    rows = await who.storage.registry.find(
        ENTERPRISES, who.scope, f, after=after, limit=limit + 1
    )
    items, more = rows[:limit], len(rows) > limit
    return Enterprises(
        items=[EnterpriseOut.model_validate(r, from_attributes=True) for r in items],
        next_cursor=_encode_cursor("enterprises", items[-1].id) if more else None,
    )


@router.get(
    "/enterprises/{id}", response_model=EnterpriseOut, summary="One enterprise",
    description="An enterprise within the key's scope, retired or not.",
    responses=_example(ENTERPRISE_EX),
)  # fmt: skip
async def get_enterprise(id: PathId, who: Reader) -> EnterpriseOut:
    row = await who.storage.registry.get(ENTERPRISES, who.scope, _path_id(id))
    if row is None:
        raise not_found("enterprise")
    return EnterpriseOut.model_validate(row, from_attributes=True)


@router.patch(
    "/enterprises/{id}", response_model=EnterpriseOut, summary="Update an enterprise",
    description="Name, industry, permits and quotas (a quota object replaces the"
    " previous one); the park and the id never change.",
    responses=_example(ENTERPRISE_EX),
)  # fmt: skip
async def update_enterprise(
    id: PathId, body: EnterpriseUpdate, who: Writer
) -> EnterpriseOut:
    _operator(who)
    changes = _changes(
        body,
        frozenset({"industry", "quotas_from", "product", "electricity_meters"}),
    )
    with _refusals("path.id"):
        row: EnterpriseRow | None = await who.storage.registry.update(
            ENTERPRISES, who.scope, _path_id(id), changes
        )
    if row is None:
        raise not_found("enterprise")
    await who.audit(
        "registry.enterprise.update", f"enterprise:{id}", detail=_audit_detail(body)
    )
    return EnterpriseOut.model_validate(row, from_attributes=True)


@router.post(
    "/enterprises/{id}/retire", response_model=EnterpriseOut,
    summary="Retire an enterprise",
    description="Idempotent. Refused (409) while it has active outlets or devices.",
    responses=_example({**ENTERPRISE_EX, "retired_at": "2026-12-02T08:00:00Z"}),
)  # fmt: skip
async def retire_enterprise(id: PathId, who: Writer) -> EnterpriseOut:
    _operator(who)
    with _refusals("path.id"):
        row = await who.storage.registry.retire(ENTERPRISES, who.scope, _path_id(id))
    if row is None:
        raise not_found("enterprise")
    await who.audit("registry.enterprise.retire", f"enterprise:{id}")
    return EnterpriseOut.model_validate(row, from_attributes=True)


_EDGE_EX = (
    "# Edge agent configuration of enterprise coal-power (park park-1), ...\n"
    "site:\n  park: park-1\n  enterprise: coal-power\n"
    "broker:\n  host: FILL-IN-broker-host\n  port: 1883\n  client_id: edge-coal-power\n"
    "outbox:\n  path: /var/lib/smartpark/outbox.db\n"
    "hj212:\n  host: 0.0.0.0\n  port: 9001\n  loggers:\n"
    "  - mn: '88888880000001'\n    device: stack-1-cems\n"
    "    timezone: Asia/Shanghai\n    pollutants:\n"
    "      a21026:\n        metric: so2\n        corrected: so2_corrected\n"
)


@router.get(
    "/enterprises/{id}/edge-config", summary="Export the edge agent YAML",
    description="A valid agent configuration for the enterprise's gateway: its site,"
    " a broker placeholder, its active Modbus devices and HJ 212 loggers. What the"
    " registry does not know is a value starting with FILL-IN (see the file's"
    " header). 409 if the enterprise has no active device.",
    response_class=Response,
    responses={200: {"content": {"application/yaml": {
        "schema": {"type": "string"}, "example": _EDGE_EX}}}, **_CONFLICT},
)  # fmt: skip
async def export_edge_config(id: PathId, who: Reader) -> Response:
    registry = who.storage.registry
    found = await registry.enterprise_devices(who.scope, _path_id(id))
    if found is None:
        raise not_found("enterprise")
    ent, devices = found
    if not devices:
        raise Problem(
            409, f"enterprise {ent.id} has no active device to configure",
            errors=[{"field": "path.id", "reason": "no active device"}],
        )  # fmt: skip
    park = await registry.get(PARKS, who.scope, ent.park)
    text = edgeconfig.export_config(
        ent, devices, timezone=None if park is None else park.timezone
    )
    # An export of the enterprise's configuration: recorded like every export.
    await who.audit(
        "registry.edge_config.export", f"enterprise:{ent.id}",
        detail={"devices": len(devices)},
    )  # fmt: skip
    return Response(text, media_type="application/yaml")


@router.post(
    "/enterprises/{id}/edge-config", response_model=ImportReport,
    summary="Register the devices of an edge agent YAML",
    description="Body: the enterprise's agent configuration (application/yaml or"
    " text/yaml; anything else 415). Its Modbus devices and HJ 212 loggers (with"
    " their MN and metrics) are registered in one transaction: new ones created,"
    " changed ones updated, the rest unchanged (idempotent). site.enterprise and"
    " site.park must be this enterprise's (422 naming them).",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/yaml": {"schema": {"type": "string"}, "example": _EDGE_EX},
        "text/yaml": {"schema": {"type": "string"}},
    }}},
    responses={
        **_example({"created": ["stack-1-cems"], "updated": [],
                    "unchanged": ["pot-line-1-meter"]}),
        415: _problem_doc(415, "Unsupported media type",
                          "send the agent YAML as application/yaml or text/yaml"),
    },
)  # fmt: skip
async def import_edge_config(id: PathId, request: Request, who: Writer) -> ImportReport:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in edgeconfig.MEDIA_TYPES:
        raise Problem(415, "send the agent YAML as application/yaml or text/yaml")
    _operator(who)
    registry = who.storage.registry
    ent = await registry.get(ENTERPRISES, who.scope, _path_id(id))
    if ent is None:
        raise not_found("enterprise")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_YAML_BYTES:
            raise bad_input("body", f"larger than {MAX_YAML_BYTES} bytes")
    try:
        parsed = edgeconfig.parse_agent_file(bytes(body))
    except edgeconfig.NotAnAgentFile as exc:
        raise bad_input(exc.field, exc.reason) from None
    if parsed.site.enterprise != ent.id:
        raise bad_input(
            "body.site.enterprise", f"this is enterprise {ent.id}'s configuration"
        )
    if parsed.site.park != ent.park:
        raise bad_input("body.site.park", f"enterprise {ent.id} is of park {ent.park}")
    devices = edgeconfig.import_devices(parsed)
    with _refusals():
        report = await registry.import_devices(
            who.scope, ent.id, devices, default_interval_s=edgeconfig.HJ212_INTERVAL_S
        )
    if report is None:
        raise not_found("enterprise")
    await who.audit(
        "registry.edge_config.import", f"enterprise:{ent.id}", detail=report
    )
    return ImportReport(**report)


# -- outlets --------------------------------------------------------------------------


def _check_o2(kind: str, reference_o2: float | None) -> None:
    if reference_o2 is not None and kind != "stack":
        raise bad_input("body.reference_o2", "only for outlets of kind stack")


@router.post(
    "/outlets", status_code=201, response_model=OutletOut,
    summary="Register an outlet",
    description="A stack or a wastewater outfall of an active enterprise within the"
    " operator's scope (else 404 enterprise), with its permit limits per metric and,"
    " for a stack, its reference O2.",
    responses={201: {"content": {"application/json": {"example": OUTLET_EX}}},
               **_CONFLICT},
)  # fmt: skip
async def create_outlet(body: OutletCreate, who: Writer) -> OutletOut:
    _operator(who)
    _check_o2(body.kind, body.reference_o2)
    with _refusals():
        row = await who.storage.registry.create_outlet(who.scope, body.model_dump())
    if row is None:
        raise not_found("enterprise")
    await who.audit(
        "registry.outlet.create", f"outlet:{row.id}", detail=_audit_detail(body)
    )
    return OutletOut.model_validate(row, from_attributes=True)


@router.get(
    "/outlets", response_model=Outlets, summary="List outlets",
    description="Within the key's scope; filter by park and enterprise.",
    responses=_example({"items": [OUTLET_EX], "next_cursor": None}),
)  # fmt: skip
async def list_outlets(
    *, who: Reader, park: IdFilter = None, enterprise: IdFilter = None,
    retired: Retired = False, limit: PageSize = 100, cursor: Cursor = None,
) -> Outlets:  # fmt: skip
    after = _decode_cursor("outlets", cursor)
    f = ListFilters(
        park=_filter("park", park),
        enterprise=_filter("enterprise", enterprise),
        retired=retired,
    )
    rows = await who.storage.registry.find(
        OUTLETS, who.scope, f, after=after, limit=limit + 1
    )
    items, more = rows[:limit], len(rows) > limit
    return Outlets(
        items=[OutletOut.model_validate(r, from_attributes=True) for r in items],
        next_cursor=_encode_cursor("outlets", items[-1].id) if more else None,
    )


@router.get(
    "/outlets/{id}", response_model=OutletOut, summary="One outlet",
    description="An outlet within the key's scope, retired or not.",
    responses=_example(OUTLET_EX),
)  # fmt: skip
async def get_outlet(id: PathId, who: Reader) -> OutletOut:
    row = await who.storage.registry.get(OUTLETS, who.scope, _path_id(id))
    if row is None:
        raise not_found("outlet")
    return OutletOut.model_validate(row, from_attributes=True)


@router.patch(
    "/outlets/{id}", response_model=OutletOut, summary="Update an outlet",
    description="Name, reference O2 (stacks; null clears it) and permit limits (the"
    " object replaces the previous limits). Kind, enterprise and id never change.",
    responses=_example(OUTLET_EX),
)  # fmt: skip
async def update_outlet(id: PathId, body: OutletUpdate, who: Writer) -> OutletOut:
    _operator(who)
    changes = _changes(body, frozenset({"reference_o2"}))
    registry = who.storage.registry
    current = await registry.get(OUTLETS, who.scope, _path_id(id))
    if current is None:
        raise not_found("outlet")
    _check_o2(current.kind, changes.get("reference_o2"))
    with _refusals("path.id"):
        row: OutletRow | None = await registry.update(OUTLETS, who.scope, id, changes)
    if row is None:
        raise not_found("outlet")
    await who.audit(
        "registry.outlet.update", f"outlet:{id}", detail=_audit_detail(body)
    )
    return OutletOut.model_validate(row, from_attributes=True)


@router.post(
    "/outlets/{id}/retire", response_model=OutletOut, summary="Retire an outlet",
    description="Idempotent. Refused (409) while active devices belong to it.",
    responses=_example({**OUTLET_EX, "retired_at": "2026-12-02T08:00:00Z"}),
)  # fmt: skip
async def retire_outlet(id: PathId, who: Writer) -> OutletOut:
    _operator(who)
    with _refusals("path.id"):
        row = await who.storage.registry.retire(OUTLETS, who.scope, _path_id(id))
    if row is None:
        raise not_found("outlet")
    await who.audit("registry.outlet.retire", f"outlet:{id}")
    return OutletOut.model_validate(row, from_attributes=True)


# -- devices --------------------------------------------------------------------------


def _check_mn_protocol(protocol: str, mn: str | None) -> None:
    if mn is not None and protocol != "hj212":
        raise bad_input("body.mn", "only for devices of protocol hj212")


def _check_types_protocol(protocol: str, data_types: dict[str, int]) -> None:
    if protocol != "hj212" and set(data_types) - {"realtime"}:
        raise bad_input(
            "body.data_types", "minute, hour and day data only for protocol hj212"
        )


@router.post(
    "/devices", status_code=201, response_model=DeviceOut,
    summary="Register a device",
    description="Of an active enterprise within the operator's scope (else 404"
    " enterprise), optionally of one of its outlets (else 404 outlet). Device ids"
    " are unique platform-wide (409 if taken), as are HJ 212 MNs.",
    responses={201: {"content": {"application/json": {"example": DEVICE_EX}}},
               **_CONFLICT},
)  # fmt: skip
async def create_device(body: DeviceCreate, who: Writer) -> DeviceOut:
    _operator(who)
    _check_mn_protocol(body.protocol, body.mn)
    _check_types_protocol(body.protocol, body.data_types)
    with _refusals():
        row = await who.storage.registry.create_device(who.scope, body.model_dump())
    if row is None:
        raise not_found("enterprise")
    await who.audit(
        "registry.device.create", f"device:{row.id}", detail=_audit_detail(body)
    )
    return DeviceOut.model_validate(row, from_attributes=True)


@router.get(
    "/devices", response_model=Devices, summary="List devices",
    description="Within the key's scope; filter by park, enterprise, outlet and"
    " protocol.",
    responses=_example({"items": [DEVICE_EX], "next_cursor": None}),
)  # fmt: skip
async def list_devices(
    *, who: Reader, park: IdFilter = None, enterprise: IdFilter = None,
    outlet: IdFilter = None, protocol: Protocol | None = None,
    retired: Retired = False, limit: PageSize = 100, cursor: Cursor = None,
) -> Devices:  # fmt: skip
    after = _decode_cursor("devices", cursor)
    f = ListFilters(
        park=_filter("park", park), enterprise=_filter("enterprise", enterprise),
        outlet=_filter("outlet", outlet), protocol=protocol, retired=retired,
    )  # fmt: skip
    rows = await who.storage.registry.find(
        DEVICES, who.scope, f, after=after, limit=limit + 1
    )
    items, more = rows[:limit], len(rows) > limit
    return Devices(
        items=[DeviceOut.model_validate(r, from_attributes=True) for r in items],
        next_cursor=_encode_cursor("devices", items[-1].id) if more else None,
    )


@router.get(
    "/devices/{id}", response_model=DeviceOut, summary="One device",
    description="A device within the key's scope, retired or not.",
    responses=_example(DEVICE_EX),
)  # fmt: skip
async def get_device(id: PathId, who: Reader) -> DeviceOut:
    row = await who.storage.registry.get(DEVICES, who.scope, _path_id(id))
    if row is None:
        raise not_found("device")
    return DeviceOut.model_validate(row, from_attributes=True)


@router.patch(
    "/devices/{id}", response_model=DeviceOut, summary="Update a device",
    description="Outlet (null: none), protocol, expected interval, metrics (the list"
    " replaces the previous one) and MN (hj212 only; null clears it).",
    responses=_example(DEVICE_EX),
)  # fmt: skip
async def update_device(id: PathId, body: DeviceUpdate, who: Writer) -> DeviceOut:
    _operator(who)
    changes = _changes(body, frozenset({"outlet", "mn"}))
    registry = who.storage.registry
    current: DeviceRow | None = await registry.get(DEVICES, who.scope, _path_id(id))
    if current is None:
        raise not_found("device")
    _check_mn_protocol(
        changes.get("protocol", current.protocol), changes.get("mn", current.mn)
    )
    _check_types_protocol(
        changes.get("protocol", current.protocol),
        changes.get("data_types", current.data_types),
    )
    with _refusals("path.id"):
        row = await registry.update(DEVICES, who.scope, id, changes)
    if row is None:
        raise not_found("device")
    await who.audit(
        "registry.device.update", f"device:{id}", detail=_audit_detail(body)
    )
    return DeviceOut.model_validate(row, from_attributes=True)


@router.post(
    "/devices/{id}/retire", response_model=DeviceOut, summary="Retire a device",
    description="Idempotent. A retired device stays readable (its telemetry keeps"
    " naming it) and is listed with ?retired=true.",
    responses=_example({**DEVICE_EX, "retired_at": "2026-12-02T08:00:00Z"}),
)  # fmt: skip
async def retire_device(id: PathId, who: Writer) -> DeviceOut:
    _operator(who)
    with _refusals("path.id"):
        row = await who.storage.registry.retire(DEVICES, who.scope, _path_id(id))
    if row is None:
        raise not_found("device")
    await who.audit("registry.device.retire", f"device:{id}")
    return DeviceOut.model_validate(row, from_attributes=True)
