"""``smartpark notifier`` and ``smartpark webhooks``: deliver alert webhooks, and
manage who receives them.

``smartpark notifier [--stats-every S]`` runs the notifier
(:mod:`notifier.service`) until SIGINT/SIGTERM. Settings from the
environment (``SMARTPARK_DATABASE__DSN``, ``SMARTPARK_KAFKA__BOOTSTRAP``,
``SMARTPARK_NOTIFIER__ALLOW='["10.20.0.0/16"]'``...).

``smartpark webhooks``:

- ``add --park P [--enterprise E] --url URL [--events T,T] [--description D]``: a
  subscription; the URL must pass the SSRF policy (loopback, private, link-local and
  metadata addresses are refused unless ``notifier.allow`` admits them). Prints the
  subscription id and its signing secret; the secret is shown this once.
- ``list [--park P]``: subscriptions (never their secrets) with how many of their
  deliveries are pending, delivered and failed; ``enable ID``; ``disable ID
  [--reason R]``.
- ``rotate ID [--overlap-h H]``: a new secret (shown once); the old ones keep
  signing for the overlap, so receivers can switch at any time within it.
- ``deliveries [--subscription ID] [--status pending|delivered|failed] [--since T]
  [--until T] [--limit N]``; ``attempts DELIVERY_ID``: the delivery log (JSON lines).
- ``redeliver DELIVERY_ID... | --subscription ID [--status S] [--since T] [--until T]``:
  queue deliveries again with a fresh schedule and the same ``webhook-id``; the
  running notifier sends them.
- ``ping ID``: send a signed ``webhook.ping`` now, from this process, through the
  same checks, signing and log as any delivery; prints the attempt.
- ``reencrypt``: encrypt every signing secret still in clear, or sealed with a key
  in ``SMARTPARK_WEBHOOKS__OLD_SECRET_KEYS``, with ``SMARTPARK_WEBHOOKS__SECRET_KEY``
  (the notifier also does this when it starts).

Every subcommand needs ``SMARTPARK_WEBHOOKS__SECRET_KEY`` (secrets are stored
encrypted with it).

Times (``--since``/``--until``) are ISO 8601 with a zone. Exit codes as every
``smartpark`` command (:mod:`smartpark.cli`): 0; 1 when something asked for does not
exist, a ping was not delivered, nothing was queued again, or the database is
unavailable; 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import secrets as stdlib_secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from notifier import events, signing
from notifier.ssrf import UnsafeDestination, check_url
from smartpark import logs
from smartpark.cli import aware_datetime, command
from smartpark.clock import system_ms
from smartpark.errors import NotFound, UsageError
from smartpark.settings import Settings, load_settings
from storage import DueDelivery, NewDelivery, Storage, Subscription, WebhookStore
from storage.secretbox import SecretBox

log = logging.getLogger("smartpark.notifier")

STATUSES = ("pending", "delivered", "failed")


@command("notifier")
def notifier_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark notifier", description="deliver alert webhooks"
    )
    parser.add_argument("--stats-every", type=float, default=10.0, metavar="S")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from notifier.service import Notifier
    from stream.service import run_until_signalled

    settings = load_settings()
    logs.configure(settings.log_level)

    async def go() -> None:
        async with Notifier(settings) as notifier:
            log.info(
                "notifier started on %s, group %s",
                settings.kafka.alerts_topic, settings.notifier.group_id,
            )  # fmt: skip
            await run_until_signalled(notifier, stats_every_s=args.stats_every, log=log)

    asyncio.run(go())
    return 0


@command("webhooks")
def main(argv: list[str] | None = None) -> int:
    """``smartpark webhooks ...``"""
    parser = argparse.ArgumentParser(prog="smartpark webhooks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="subscribe an endpoint")
    add.add_argument("--park", required=True)
    add.add_argument("--enterprise", help="omit for the park's operators")
    add.add_argument("--url", required=True)
    add.add_argument(
        "--events",
        default=",".join(events.EVENT_TYPES),
        help=f"comma-separated, of: {', '.join(events.EVENT_TYPES)}",
    )
    add.add_argument("--description", default="")
    lst = sub.add_parser("list", help="subscriptions (no secrets)")
    lst.add_argument("--park")
    for name in ("enable", "disable"):
        p = sub.add_parser(name, help=f"{name} a subscription")
        p.add_argument("subscription_id")
        if name == "disable":
            p.add_argument("--reason", default="disabled by an operator")
    rot = sub.add_parser("rotate", help="a new signing secret, with an overlap")
    rot.add_argument("subscription_id")
    rot.add_argument(
        "--overlap-h", type=float, help="default notifier.rotation_overlap_h"
    )
    dl = sub.add_parser("deliveries", help="the delivery log")
    _filters(dl)
    dl.add_argument("--limit", type=int, default=1000)
    at = sub.add_parser("attempts", help="every attempt of a delivery")
    at.add_argument("delivery_id", type=int)
    rd = sub.add_parser("redeliver", help="send deliveries again")
    rd.add_argument("delivery_ids", nargs="*", type=int)
    _filters(rd)
    ping = sub.add_parser("ping", help="send a signed test event now")
    ping.add_argument("subscription_id")
    sub.add_parser(
        "reencrypt",
        help="encrypt every signing secret with SMARTPARK_WEBHOOKS__SECRET_KEY",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    settings = load_settings()
    logs.configure(settings.log_level)
    keys = SecretBox.from_settings(settings.webhooks)
    run: Callable[[WebhookStore, Settings, argparse.Namespace], Awaitable[int]]
    run = _COMMANDS[args.command]

    async def go() -> int:
        async with Storage(settings.database, webhook_keys=keys) as storage:
            await storage.require_migrated()
            return await run(storage.webhooks, settings, args)

    return asyncio.run(go())


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscription")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--since", type=_when, metavar="ISO")
    p.add_argument("--until", type=_when, metavar="ISO")


def _when(text: str) -> int:
    # --since T includes T itself
    return math.floor(aware_datetime(text).timestamp() * 1000)


def _print(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, default=str, sort_keys=True))


async def _add(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    try:
        types = events.check_event_types(args.events.split(","))
    except ValueError as exc:
        raise UsageError(f"--events: {exc}") from None
    try:
        await asyncio.to_thread(check_url, args.url, allow=settings.notifier.allow)
    except UnsafeDestination as exc:
        raise UsageError(f"--url refused: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--url: cannot resolve the host: {exc}") from None
    sub = Subscription(
        f"sub_{stdlib_secrets.token_hex(8)}", args.park, args.enterprise,
        args.url.strip(), types, args.description,
    )  # fmt: skip
    secret = signing.generate_secret()
    await store.create_subscription(sub, secret)
    _print({**sub.to_json(), "secret": secret})
    print(
        "the signing secret is shown only now: give it to the receiver's owner",
        file=sys.stderr,
    )
    return 0


async def _list(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    counts = await store.delivery_counts()
    for sub in await store.subscriptions(park=args.park):
        none = dict.fromkeys(STATUSES, 0)
        _print({**sub.to_json(), "deliveries": counts.get(sub.subscription_id, none)})
    return 0


async def _enable(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    return _found(
        args.subscription_id, await store.set_enabled(args.subscription_id, True)
    )


async def _disable(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    done = await store.set_enabled(args.subscription_id, False, reason=args.reason)
    return _found(args.subscription_id, done)


def _found(subscription_id: str, found: bool) -> int:
    if not found:
        raise NotFound(f"no subscription {subscription_id}")
    print(subscription_id)
    return 0


async def _rotate(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    hours = (
        settings.notifier.rotation_overlap_h
        if args.overlap_h is None
        else args.overlap_h
    )
    if hours < 0:
        raise UsageError("--overlap-h must not be negative")
    secret = signing.generate_secret()
    until = system_ms() + round(hours * 3_600_000)
    if not await store.rotate_secret(args.subscription_id, secret, old_until_ms=until):
        return _found(args.subscription_id, False)
    _print(
        {
            "subscription_id": args.subscription_id,
            "secret": secret,
            "old_secrets_sign_until_ms": until,
        }
    )
    print("the new secret is shown only now", file=sys.stderr)
    return 0


async def _deliveries(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    rows = await store.deliveries(
        subscription_id=args.subscription,
        status=args.status,
        since_ms=args.since,
        until_ms=args.until,
        limit=args.limit,
    )
    for row in rows:
        _print(dataclasses.asdict(row))
    return 0


async def _attempts(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    rows = await store.attempts(args.delivery_id)
    if not rows and await store.delivery_body(args.delivery_id) is None:
        raise NotFound(f"no delivery {args.delivery_id}")
    for row in rows:
        _print(dataclasses.asdict(row))
    return 0


async def _redeliver(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    filters = (args.subscription, args.status, args.since, args.until)
    if bool(args.delivery_ids) == any(f is not None for f in filters):
        raise UsageError(
            "give delivery ids, or filters (--subscription/--status/--since/--until)"
        )
    count = await store.redeliver(
        system_ms(),
        delivery_ids=args.delivery_ids,
        subscription_id=args.subscription,
        status=args.status,
        since_ms=args.since,
        until_ms=args.until,
    )
    print(f"{count} deliveries queued again", file=sys.stderr)
    return 0 if count else 1


async def _ping(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    from notifier.http import Sender
    from notifier.service import Deliverer

    sub = await store.subscription(args.subscription_id)
    if sub is None:
        return _found(args.subscription_id, False)
    now = system_ms()
    event_id = f"ping_{stdlib_secrets.token_hex(12)}"
    delivery = NewDelivery(
        sub.subscription_id, event_id, events.PING, event_id, now,
        events.ping_body(sub.subscription_id, now),
    )  # fmt: skip
    # Queued so the log has it, due in a year so a running notifier leaves it to
    # this process; the one attempt below is final either way.
    delivery_id = await store.queue_one(delivery, now_ms=now + 365 * 86_400_000)
    cfg = settings.notifier
    sender = Sender(
        allow=cfg.allow,
        connect_timeout_s=cfg.connect_timeout_s,
        timeout_s=cfg.timeout_s,
    )
    async with sender:
        await Deliverer(store, sender).attempt(
            DueDelivery(
                delivery_id, sub.subscription_id, sub.url, event_id, events.PING,
                delivery.body, 0, 0,
            ),
            last=True,
        )  # fmt: skip
    rows = await store.attempts(delivery_id)
    for row in rows:
        _print(dataclasses.asdict(row))
    return 0 if rows and rows[-1].outcome == "delivered" else 1


async def _reencrypt(
    store: WebhookStore, settings: Settings, args: argparse.Namespace
) -> int:
    count = await store.reencrypt()
    print(f"{count} webhook secrets encrypted with the current key", file=sys.stderr)
    return 0


_COMMANDS: dict[
    str, Callable[[WebhookStore, Settings, argparse.Namespace], Awaitable[int]]
] = {
    "add": _add,
    "list": _list,
    "enable": _enable,
    "disable": _disable,
    "rotate": _rotate,
    "deliveries": _deliveries,
    "attempts": _attempts,
    "redeliver": _redeliver,
    "ping": _ping,
    "reencrypt": _reencrypt,
}
