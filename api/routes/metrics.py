"""``/metrics``: Prometheus counters of the API itself (requests by route and
status, latency, refused keys). Aggregate counts only, no tenant's data, so it
is served without a key, for the scraper on the platform's network."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

router = APIRouter(tags=["health"])


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "smartpark_api_requests",
            "API requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "smartpark_api_request_seconds",
            "API request latency by route template.",
            ["route"],
            registry=self.registry,
        )


def install(app: FastAPI) -> None:
    metrics = app.state.metrics = ApiMetrics()

    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.requests.labels(
            request.method, template, str(response.status_code)
        ).inc()
        metrics.seconds.labels(template).observe(time.perf_counter() - start)
        return response


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": (
        "smartpark_api_requests_total{method=\"GET\",route=\"/v1/latest\","
        "status=\"200\"} 3.0\n")}}}},
)  # fmt: skip
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
