"""HJ 212 data-logger protocol (2005, 2017, 2025): frame codec, stream decoder, CLI.

:mod:`.codec` (CRC, :func:`decode` / :func:`encode`, the frozen dataclasses),
:mod:`.dictionary` (what each generation defines, :func:`check` against one),
:mod:`.stream` (:class:`FrameBuffer` for TCP reads), :mod:`.jsonform` (the JSON form
the CLI prints and reads), :mod:`.cli` (``smartpark hj212 decode | encode``).
Everything here imports only the standard library and smartpark core.
"""

from edge_agent.hj212.codec import (
    build_frame,
    crc16,
    decode,
    encode,
    encode_data,
    parse_time,
)
from edge_agent.hj212.dictionary import check, required_reply
from edge_agent.hj212.model import (
    FLAG_REPLY,
    FLAG_SPLIT,
    MAX_DATA_LENGTH,
    OVERHEAD,
    Decoded,
    Frame,
    Hj212Error,
    Hj212Version,
    Issue,
    Packet,
    Pollutant,
)
from edge_agent.hj212.stream import FrameBuffer

__all__ = [
    "FLAG_REPLY",
    "FLAG_SPLIT",
    "MAX_DATA_LENGTH",
    "OVERHEAD",
    "Decoded",
    "Frame",
    "FrameBuffer",
    "Hj212Error",
    "Hj212Version",
    "Issue",
    "Packet",
    "Pollutant",
    "build_frame",
    "check",
    "crc16",
    "decode",
    "encode",
    "encode_data",
    "parse_time",
    "required_reply",
]
