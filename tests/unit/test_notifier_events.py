"""Alert events → webhook types, recipients and bodies (notifier.events)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from notifier import events
from rules.engine import Engine
from rules.model import Obs
from rules.pack import parse_pack

T0 = 1_704_067_200_000


@dataclass(frozen=True)
class Sub:
    park: str
    enterprise: str | None
    event_types: tuple[str, ...] = events.EVENT_TYPES


def engine_events() -> list[dict[str, Any]]:
    """Real events of the core: a threshold and a missing-data rule."""
    pack = parse_pack(
        {
            "pack": "p",
            "version": "1",
            "watermark_delay": 0,
            "rules": [
                {"id": "nh3", "kind": "threshold", "metric": "nh3", "limit": 8},
                {"id": "silent", "kind": "missing_data", "metrics": ["nh3"],
                 "expected_interval": "10s", "max_silence": "1min"},
            ],
        }
    )  # fmt: skip
    engine = Engine(pack)
    out = []
    steps = [(0, 9.0, "d1"), (10, 5.0, "d1")]
    steps += [(t, 5.0, "d2") for t in range(20, 201, 30)]  # d1 silent: offline
    steps += [(210, 5.0, "d1")]  # back
    for t, value, device in steps:
        obs = Obs(T0 + t * 1000, "park-a", "ent-1", device, "nh3", value)
        out += [e.to_json() for e in engine.feed(obs)]
    return out


def test_the_core_events_map_to_alert_and_device_types() -> None:
    types = [(e["rule_id"], events.event_type(e)) for e in engine_events()]
    assert types == [
        ("nh3", "alert.opened"),
        ("nh3", "alert.resolved"),
        ("silent", "device.offline"),
        ("silent", "device.back"),
    ]


def test_an_acknowledgement_of_any_rule_is_alert_acknowledged() -> None:
    event = {**engine_events()[2], "kind": "acknowledged"}
    assert events.event_type(event) == "alert.acknowledged"


def test_an_enterprise_gets_its_own_events_and_the_park_gets_all() -> None:
    event = engine_events()[0]
    mine = Sub("park-a", "ent-1")
    other = Sub("park-a", "ent-2")
    operators = Sub("park-a", None)
    other_park = Sub("park-b", None)
    only_resolved = Sub("park-a", "ent-1", ("alert.resolved",))
    subs = [mine, other, operators, other_park, only_resolved]
    assert events.matching(subs, event, "alert.opened") == [mine, operators]


def test_the_body_is_the_event_with_type_timestamp_and_links() -> None:
    event = engine_events()[0]
    text = events.body(event, "alert.opened", public_url="https://park.example/api/")
    doc = json.loads(text)
    assert doc["type"] == "alert.opened"
    assert doc["timestamp"] == "2024-01-01T00:00:00.000Z"
    assert doc["data"] == {
        **event,
        "links": {"alert": f"https://park.example/api/v1/alerts/{event['alert_id']}"},
    }
    assert "links" not in json.loads(events.body(event, "alert.opened"))["data"]
    # the same event always gives the same bytes (they are signed)
    assert events.body(dict(reversed(event.items())), "alert.opened") == events.body(
        event, "alert.opened"
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"alert_id": "a"}, "event_id: expected a non-empty id"),
        ({"event_id": "a.b", "alert_id": "a"}, "event_id: expected a non-empty id"),
        ({"event_id": "e", "alert_id": "a", "at_ms": "1"}, "at_ms: expected integer"),
        ({"event_id": "e", "alert_id": "a", "at_ms": 1}, "scope.park: missing"),
        (
            {
                "event_id": "e",
                "alert_id": "a",
                "at_ms": 1,
                "scope": {"park": "p"},
                "kind": "exploded",
            },
            "kind: unknown event kind 'exploded'",
        ),
    ],
)
def test_a_record_that_is_not_an_event_is_refused_with_the_reason(
    record: object, reason: str
) -> None:
    with pytest.raises(events.BadEvent, match=reason):
        events.check_event(record)


def test_event_types_are_checked() -> None:
    assert events.check_event_types(
        ["alert.opened", " device.back", "alert.opened"]
    ) == (
        "alert.opened",
        "device.back",
    )
    with pytest.raises(ValueError, match=r"unknown event type 'alert\.exploded'"):
        events.check_event_types(["alert.exploded"])
    with pytest.raises(ValueError, match="no event types"):
        events.check_event_types(["", " "])
