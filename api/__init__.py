"""The platform API (FastAPI): auth and tenancy, registry, telemetry queries and
exports, alerts, webhooks. :func:`api.app.create_app` builds it; ``smartpark api``
serves it, ``smartpark keys`` manages its keys (:mod:`api.cli`)."""
