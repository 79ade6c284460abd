"""Problem details (RFC 9457) for every error the API returns.

Every 4xx and 5xx is ``application/problem+json``: ``type``, ``title``,
``status``, ``detail`` and, for bad input, ``errors`` naming each field
(``query.start``, ``body.timezone``) and the reason. "Exists but not yours" and
"does not exist" are the same 404, word for word: no tenant-id oracle.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartpark.errors import ArchivedRange, StorageError

MEDIA_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Unprocessable request",
    500: "Internal error",
    503: "Service unavailable",
}


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemBody(BaseModel):
    """RFC 9457 problem details, as every error of the API is returned."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def _documented(status: int, example: str) -> dict[str, Any]:
    return {
        "description": _TITLES[status],
        "content": {
            MEDIA_TYPE: {
                "schema": ProblemBody.model_json_schema(),
                "example": {"type": "about:blank", "title": _TITLES[status],
                            "status": status, "detail": example},
            }
        },
    }  # fmt: skip


# The error responses every route may give, documented once for the whole app.
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _documented(401, "send the API key as 'Authorization: Bearer spk_…'"),
    403: _documented(403, "a regulator key is read-only"),
    404: _documented(404, "device not found"),
    422: _documented(422, "query.end: must be after start"),
    503: _documented(503, "the database is unavailable; try again"),
}


class Problem(Exception):
    """Raise in a route: becomes a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def not_found(what: str) -> Problem:
    """The one 404 for "no such thing" and "not within your scope"."""
    return Problem(404, f"{what} not found")


def bad_input(field: str, reason: str) -> Problem:
    return Problem(
        422, f"{field}: {reason}", errors=[{"field": field, "reason": reason}]
    )


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(
        body, status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query_parameters(request: Request) -> None:
    """Refuse a query parameter the route does not take: a misspelt filter
    (``?devcie=a1``) must not silently widen an answer to the whole scope."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    unknown = sorted(set(request.query_params) - _query_names(dependant))
    if unknown:
        errors = [
            {"field": f"query.{n}", "reason": "unknown parameter"} for n in unknown
        ]
        raise Problem(422, "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
                      errors=errors)  # fmt: skip


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return problem_response(422, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, str(exc.detail), None, headers)

    @app.exception_handler(ArchivedRange)
    async def _archived(request: Request, exc: ArchivedRange) -> JSONResponse:
        return problem_response(
            409, str(exc), [{"field": "query", "reason": "days in the sealed archive"}]
        )

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        return problem_response(503, "the database is unavailable; try again")
