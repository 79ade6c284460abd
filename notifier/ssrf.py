"""The notifier's SSRF policy: :mod:`smartpark.ssrf`, shared with the API (which
validates a subscription's URL when it is created) and re-exported here."""

from __future__ import annotations

from smartpark.ssrf import (
    ALLOWED_SCHEMES,
    CLOUD_METADATA,
    ResolvedTarget,
    Resolver,
    UnsafeDestination,
    check_redirect,
    check_url,
    system_resolve,
)

__all__ = [
    "ALLOWED_SCHEMES",
    "CLOUD_METADATA",
    "ResolvedTarget",
    "Resolver",
    "UnsafeDestination",
    "check_redirect",
    "check_url",
    "system_resolve",
]
