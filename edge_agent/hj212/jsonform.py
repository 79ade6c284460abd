"""The JSON form of a :class:`~edge_agent.hj212.codec.Packet` (what the CLI prints).

::

    {"QN": "20210305003817123", "ST": "31", "CN": "2051", "PW": "123456",
     "MN": "MN001", "Flag": 4, "DataTime": "20210305003800",
     "pollutants": {"a21026": {"Min": "1.0", "Avg": "2.50", "Flag": "N"}},
     "params": [["RtdInterval", "30"]],
     "extra_header": [["X", "1"]], "extra_cp": [["VendorX", "1"]]}

Header fields and ``DataTime`` keep their wire names; absent fields are omitted.
Numbers are printed as JSON strings holding the exact decimal text, because a JSON
reader that maps numbers to float would lose ``2.50``'s trailing zero. :func:`from_json`
also accepts JSON numbers: integers, and :class:`~decimal.Decimal` (load with
``json.loads(text, parse_float=Decimal)`` to keep the text); a float is refused.
``params`` (the other CP fields the standard defines, text as sent, in wire order)
appears when there are some; ``extra_*`` only for fields a lenient decode kept. A
2005 corrected group's own flag (:attr:`~.model.Pollutant.zs_flag`) is ``ZsFlag``
beside ``Flag`` (a JSON name only: on the wire both are ``-Flag``).
``from_json(to_json(p)) == p``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from edge_agent.hj212.model import SUFFIXES, Hj212Error, Packet, Pollutant

_HEADER_TEXT = (("QN", "qn"), ("ST", "st"), ("CN", "cn"), ("PW", "pw"), ("MN", "mn"))
_HEADER_INT = (("Flag", "flag"), ("PNUM", "pnum"), ("PNO", "pno"))
_KEYS = frozenset(
    [k for k, _ in _HEADER_TEXT + _HEADER_INT]
    + ["DataTime", "pollutants", "params", "extra_header", "extra_cp"]
)
_TEXT_SUFFIXES = frozenset({"Flag", "EFlag", "SampleTime", "ZsFlag"})
#: the JSON names of a pollutant's values: the wire suffixes and ``ZsFlag``
_POLLUTANT_KEYS = (*SUFFIXES, ("ZsFlag", "zs_flag"))


def to_json(packet: Packet) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, attr in _HEADER_TEXT + _HEADER_INT:
        value = getattr(packet, attr)
        if value is not None:
            obj[key] = value
    if packet.data_time is not None:
        obj["DataTime"] = packet.data_time
    obj["pollutants"] = {
        p.code: {
            suffix: value if isinstance(value, str) else format(value, "f")
            for suffix, attr in _POLLUTANT_KEYS
            if (value := getattr(p, attr)) is not None
        }
        for p in packet.pollutants
    }
    if packet.params:
        obj["params"] = [list(kv) for kv in packet.params]
    if packet.extra_header:
        obj["extra_header"] = [list(kv) for kv in packet.extra_header]
    if packet.extra_cp:
        obj["extra_cp"] = [list(kv) for kv in packet.extra_cp]
    return obj


def from_json(obj: Any) -> Packet:
    """The packet of a JSON object; :class:`Hj212Error` (path ``json.…``) if invalid.

    Only the shape is checked here; :func:`~.codec.encode` checks the content.
    """
    if not isinstance(obj, dict):
        raise Hj212Error("json", "expected a JSON object", kind="field")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise Hj212Error(f"json.{unknown[0]}", "unknown field", kind="field")
    kwargs: dict[str, Any] = {}
    for key, attr in _HEADER_TEXT:
        kwargs[attr] = _opt(obj, key, str)
    for key, attr in _HEADER_INT:
        value = obj.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise Hj212Error(
                f"json.{key}", f"expected an integer >= 0, got {value!r}", kind="field"
            )
        kwargs[attr] = value
    for key in ("ST", "CN", "MN"):
        if kwargs[key.lower()] is None:
            raise Hj212Error(f"json.{key}", "missing", kind="field")
    kwargs["data_time"] = _opt(obj, "DataTime", str)
    raw = obj.get("pollutants", {})
    if not isinstance(raw, dict):
        raise Hj212Error("json.pollutants", "expected an object", kind="field")
    kwargs["pollutants"] = tuple(_pollutant(code, v) for code, v in raw.items())
    for key in ("params", "extra_header", "extra_cp"):
        kwargs[key] = _pairs(obj.get(key, []), f"json.{key}")
    return Packet(**kwargs)


def _opt(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise Hj212Error(
            f"json.{key}", f"expected a string, got {value!r}", kind="field"
        )
    return value


def _pollutant(code: str, raw: Any) -> Pollutant:
    path = f"json.pollutants.{code}"
    if not isinstance(raw, dict):
        raise Hj212Error(path, "expected an object", kind="field")
    attrs = dict(_POLLUTANT_KEYS)
    kwargs: dict[str, Any] = {}
    for suffix, value in raw.items():
        if suffix not in attrs:
            raise Hj212Error(f"{path}.{suffix}", "unknown field", kind="field")
        if suffix in _TEXT_SUFFIXES:
            if not isinstance(value, str):
                raise Hj212Error(
                    f"{path}.{suffix}",
                    f"expected a string, got {value!r}",
                    kind="field",
                )
            kwargs[attrs[suffix]] = value
        else:
            kwargs[attrs[suffix]] = _number(value, f"{path}.{suffix}")
    return Pollutant(code, **kwargs)


def _number(value: Any, path: str) -> Decimal:
    if type(value) is int or isinstance(value, Decimal):
        return Decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise Hj212Error(path, f"bad number {value!r}", kind="number") from None
        if number.is_finite():
            return number
    raise Hj212Error(path, f"expected a decimal number, got {value!r}", kind="number")


def _pairs(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not all(
        isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv)
        for kv in raw
    ):
        raise Hj212Error(path, "expected a list of [key, value] strings", kind="field")
    return tuple((k, v) for k, v in raw)
