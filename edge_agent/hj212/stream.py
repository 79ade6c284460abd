"""Cutting a TCP byte stream from a data logger into HJ 212 frames.

:class:`FrameBuffer` is a small state machine with no I/O: the connection handler
feeds it whatever ``recv`` returned and gets back, in stream order, a decoded frame or
an :class:`~edge_agent.hj212.codec.Hj212Error` per event. Contracts:

- Frames split across reads, several frames in one read, and any mix of the two give
  the same results: splitting the input at any position never changes the output
  (garbage is reported as one error when the next ``##`` or :meth:`flush` ends it).
- Bytes before a ``##`` are skipped and reported (kind ``stream``) with their count
  and their first bytes.
- Frames are cut by their declared length. A frame whose length field is not 4
  digits, exceeds ``max_data_length``, or whose CRC is not followed by ``\\r\\n``
  is reported, and the search for the next ``##`` resumes one byte after its start
  (so its remaining bytes are then reported as skipped). A frame with a correct
  trailer but a bad CRC or content is reported and consumed whole.
- In lenient mode a frame without ``\\r\\n`` is accepted when its CRC matches; a
  wrong declared length cannot be tolerated here, since the length is what frames
  the stream.
- A frame the stream ends inside (at :meth:`flush`: end of stream, connection
  closed or idle) is a ``length`` error in both modes, as :func:`~.codec.decode`
  names a truncated frame: fewer bytes arrived than its length declares. When its
  data and CRC did all arrive and only (part of) the ``\\r\\n`` is missing, it
  is a ``trailer`` error in strict mode and accepted in lenient mode.
- Memory is bounded: the buffer never holds more than
  ``max_data_length + OVERHEAD`` bytes.
- :meth:`feed` and :meth:`flush` never raise on any input.
"""

from __future__ import annotations

from edge_agent.hj212.codec import decode
from edge_agent.hj212.model import MAX_DATA_LENGTH, OVERHEAD, Decoded, Hj212Error

_SAMPLE = 16


class FrameBuffer:
    """Stream decoder; ``strict`` is passed to :func:`~.codec.decode` per frame."""

    def __init__(
        self, *, strict: bool = True, max_data_length: int = MAX_DATA_LENGTH
    ) -> None:
        if not 0 <= max_data_length <= MAX_DATA_LENGTH:
            raise ValueError(f"max_data_length must be 0..{MAX_DATA_LENGTH}")
        self.strict = strict
        self.max_data_length = max_data_length
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._skipped = 0
        self._skipped_at = 0
        self._sample = bytearray()

    @property
    def max_buffer(self) -> int:
        """The most bytes the buffer ever holds."""
        return self.max_data_length + OVERHEAD

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (at most :attr:`max_buffer`)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Decoded | Hj212Error]:
        """Add ``data``; return every frame or error it completes, in order."""
        self._buf += data
        out: list[Decoded | Hj212Error] = []
        while self._step(out):
            pass
        return out

    def flush(self) -> list[Decoded | Hj212Error]:
        """End of stream: report an incomplete frame and skipped bytes; reset."""
        out: list[Decoded | Hj212Error] = []
        if not self._buf.startswith(b"##"):
            self._skip(len(self._buf))
        out += self._report_skipped()
        if self._buf and not self.strict:
            # A lenient last frame may lack its CRLF: it is only complete now.
            out += self._lenient_tail()
        if self._buf:
            end = self._declared_end()
            complete = end is not None and len(self._buf) >= end
            reason = (
                f"stream ended before the frame's '\\r\\n' ({len(self._buf)} bytes)"
                if complete
                else f"truncated: stream ended inside a frame ({len(self._buf)} bytes)"
            )
            out.append(
                Hj212Error(
                    f"stream[{self._offset}]",
                    reason,
                    kind="trailer" if complete else "length",
                )
            )
        self._consume(len(self._buf))
        return out

    def _step(self, out: list[Decoded | Hj212Error]) -> bool:
        """Process the buffer head; True if it changed and another step may help."""
        start = self._buf.find(b"##")
        if start < 0:
            # A trailing '#' may be the first half of the next '##'.
            keep = 1 if self._buf.endswith(b"#") else 0
            self._skip(len(self._buf) - keep)
            return False
        # "###0109…": a '#' cannot start the length, so the frame begins one later.
        while self._buf[start + 2 : start + 3] == b"#":
            start += 1
        self._skip(start)
        if len(self._buf) < 3:
            # Not yet known whether this '##' starts a frame: report skipped bytes
            # only once it does, so that how the reads were cut changes nothing.
            return False
        out += self._report_skipped()
        if len(self._buf) < 6:
            return False
        digits = bytes(self._buf[2:6])
        if not (digits.isdigit() and digits.isascii()):
            return self._reject(out, "frame.length", f"bad length {digits!r}", "length")
        n = int(digits)
        if n > self.max_data_length:
            reason = f"declared {n} bytes, limit {self.max_data_length}"
            return self._reject(out, "frame.length", reason, "length")
        end = 6 + n + 4
        if len(self._buf) < end + 2:
            return False
        if self._buf[end : end + 2] == b"\r\n":
            out.append(self._decode(bytes(self._buf[: end + 2])))
            self._consume(end + 2)
            return True
        if not self.strict:
            result = self._decode(bytes(self._buf[:end]))
            if isinstance(result, Decoded):
                out.append(result)
                self._consume(end)
                return True
        got = bytes(self._buf[end : end + 2])
        reason = f"no '\\r\\n' after the declared {n} bytes and CRC, got {got!r}"
        return self._reject(out, "frame.trailer", reason, "trailer")

    def _lenient_tail(self) -> list[Decoded | Hj212Error]:
        end = self._declared_end()
        if end is None or len(self._buf) not in (end, end + 1):
            return []
        n = len(self._buf)  # the frame, perhaps with the CR of its trailer
        result = self._decode(bytes(self._buf))
        self._consume(n)
        return [result]

    def _declared_end(self) -> int | None:
        """Where the CRC of the buffered frame ends, if its length field is whole."""
        digits = bytes(self._buf[2:6])
        if len(digits) < 4 or not (digits.isdigit() and digits.isascii()):
            return None
        return 6 + int(digits) + 4

    def _decode(self, frame: bytes) -> Decoded | Hj212Error:
        try:
            return decode(frame, strict=self.strict)
        except Hj212Error as err:
            return err

    def _reject(
        self, out: list[Decoded | Hj212Error], path: str, reason: str, kind: str
    ) -> bool:
        out.append(Hj212Error(path, f"at stream[{self._offset}]: {reason}", kind=kind))
        self._consume(1)
        return True

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        if not self._skipped:
            self._skipped_at = self._offset
        room = _SAMPLE - len(self._sample)
        self._sample += self._buf[: min(n, room)]
        self._skipped += n
        self._consume(n)

    def _report_skipped(self) -> list[Decoded | Hj212Error]:
        if not self._skipped:
            return []
        err = Hj212Error(
            f"stream[{self._skipped_at}]",
            f"skipped {self._skipped} bytes before '##': {bytes(self._sample)!r}",
            kind="stream",
        )
        self._skipped = 0
        self._sample.clear()
        return [err]
