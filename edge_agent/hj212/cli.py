"""``smartpark hj212 decode | encode``: HJ 212 frames by hand.

``decode [--lenient] [--version 2005|2017|2025 [--unverified-2025]] [FRAME ...]``
checks each frame against that generation of the standard too (see
:mod:`edge_agent.hj212.dictionary`); it reads frames from the arguments, or one per line
from stdin, and prints one JSON object per valid frame on stdout (the form of
:mod:`edge_agent.hj212.jsonform`); for an invalid frame it prints
``frame N: path: reason`` on stderr (N counts from 1) and the exit code is 1. In
lenient mode each tolerated issue is printed on stderr as ``frame N: tolerated: …``.
Because a shell argument or a line cannot carry the ``\\r\\n`` trailer, the CLI
strips any trailing CR/LF and appends ``\\r\\n`` itself; blank lines are ignored.

``encode [JSON]`` reads one JSON object (the argument, else stdin) and prints its
frame without the ``\\r\\n`` trailer (print adds the line end); exit 1 if invalid.

Exit codes: 0 success, 1 invalid input, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal

from edge_agent.hj212.codec import decode, encode
from edge_agent.hj212.jsonform import from_json, to_json
from edge_agent.hj212.model import Hj212Error, Hj212Version


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartpark hj212", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dec = sub.add_parser("decode", help="frames → JSON lines")
    dec.add_argument("frames", nargs="*", help="frames; read stdin lines if none")
    dec.add_argument("--lenient", action="store_true", help="tolerate what can be")
    dec.add_argument(
        "--version",
        choices=[v.value for v in Hj212Version],
        help="also check against this generation of the standard",
    )
    dec.add_argument(
        "--unverified-2025",
        action="store_true",
        help="with --version 2025: accept the 2025 features no public source confirms",
    )
    enc = sub.add_parser("encode", help="JSON object → frame")
    enc.add_argument("json", nargs="?", help="JSON object; read stdin if absent")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        code = exc.code
        return code if isinstance(code, int) else 2
    if args.command == "decode":
        frames = args.frames or sys.stdin.read().splitlines()
        version = None if args.version is None else Hj212Version(args.version)
        return _decode(
            frames,
            strict=not args.lenient,
            version=version,
            unverified_2025=args.unverified_2025,
        )
    return _encode(sys.stdin.read() if args.json is None else args.json)


def _decode(
    frames: list[str],
    *,
    strict: bool,
    version: Hj212Version | None = None,
    unverified_2025: bool = False,
) -> int:
    rc = 0
    for number, line in enumerate(frames, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            result = decode(
                text + "\r\n",
                strict=strict,
                version=version,
                unverified_2025=unverified_2025,
            )
        except Hj212Error as err:
            print(f"frame {number}: {err}", file=sys.stderr)
            rc = 1
            continue
        for issue in result.issues:
            print(f"frame {number}: tolerated: {issue}", file=sys.stderr)
        print(json.dumps(to_json(result.packet), ensure_ascii=False))
    return rc


def _encode(text: str) -> int:
    try:
        obj = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        print(f"encode: not JSON: {exc}", file=sys.stderr)
        return 1
    try:
        frame = encode(from_json(obj))
    except Hj212Error as err:
        print(f"encode: {err}", file=sys.stderr)
        return 1
    print(frame.decode().rstrip("\r\n"))
    return 0
