"""Bad bytes that real loggers and links produce, which a strict listener must reject.

:func:`corrupt` turns a valid :class:`~edge_agent.hj212.model.Packet` into the bytes of
one kind in :data:`CORRUPTIONS`. Contract: followed by at least one valid frame, every
kind is rejected by the strict codec and by a stream decoder that resyncs on ``##``
(:class:`~edge_agent.hj212.stream.FrameBuffer`), which then still delivers that valid
frame; no kind makes the decoder wait for more than the next frame's bytes, so
nothing valid is held back when the connection ends after it.

- ``crc``: the CRC is off by one.
- ``length``: the declared length is 1-9 bytes short (a long one would make the
  decoder wait for the next frame's head).
- ``truncated``: the frame ends inside the second half of its data segment (a logger
  reset mid-write); the decoder takes the next frame's head as the missing tail,
  finds no CRLF there, and resyncs on the next frame's ``##``.
- ``garbage``: 8-40 bytes of line noise without ``#``, no frame at all.
- ``unknown_cp``: correct length and CRC, but a CP field no 2017 packet has
  (``{code}-Unit=mg``); a *lenient* decoder accepts it, keeping the field aside.
- ``oversize``: a data segment longer than ``MAX_DATA_LENGTH`` (a packet the logger
  should have split with PNUM/PNO), declared with its true five-digit length.
"""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

from edge_agent.hj212.codec import build_frame, crc16, encode, encode_data
from edge_agent.hj212.model import MAX_DATA_LENGTH, Packet, Pollutant

CORRUPTIONS = ("crc", "length", "truncated", "garbage", "unknown_cp", "oversize")


def corrupt(kind: str, packet: Packet, rng: random.Random) -> bytes:
    """The bytes of corruption ``kind`` applied to ``packet`` (see the module doc)."""
    data = encode_data(packet)
    raw = data.encode()
    crc = crc16(raw)
    if kind == "crc":
        return build_frame(data, f"{(crc + 1) & 0xFFFF:04x}")
    if kind == "length":
        return b"##%04d%s%04x\r\n" % (len(raw) - rng.randint(1, 9), raw, crc)
    if kind == "truncated":
        frame = build_frame(data)
        return frame[: 6 + rng.randint(len(raw) // 2, len(raw) - 1)]
    if kind == "garbage":
        noise = rng.randbytes(rng.randint(8, 40))
        return noise.replace(b"#", b"?")
    if kind == "unknown_cp":
        code = packet.pollutants[0].code if packet.pollutants else "a00000"
        return encode(replace(packet, extra_cp=((f"{code}-Unit", "mg"),)))
    if kind == "oversize":
        # each padding code adds 27 bytes: "a90001-Rtd=0,a90001-Flag=N;"
        n = (MAX_DATA_LENGTH - len(raw)) // 20 + 1
        pad = tuple(Pollutant(f"a9{i:04d}", rtd=Decimal(0), flag="N") for i in range(n))
        raw = encode_data(replace(packet, pollutants=packet.pollutants + pad)).encode()
        assert len(raw) > MAX_DATA_LENGTH
        return b"##%d%s%04x\r\n" % (len(raw), raw, crc16(raw))
    raise ValueError(f"unknown corruption {kind!r}: {CORRUPTIONS}")
