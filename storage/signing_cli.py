"""``smartpark signing``: the platform's signing key.

    smartpark signing keygen     print a new private key (PEM) for
                                 SMARTPARK_SIGNING__PRIVATE_KEY
    smartpark signing public     print the configured key's public key (PEM) and
                                 its id, to give to whoever verifies

Exit codes as every ``smartpark`` command (:mod:`smartpark.cli`).
"""

from __future__ import annotations

import argparse
import sys

from smartpark.cli import command
from smartpark.settings import load_settings
from storage.signing import generate_private_key, signer_from_settings


@command("signing")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark signing")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("keygen", help="print a new Ed25519 private key (PEM)")
    sub.add_parser("public", help="print the configured key's public key (PEM)")
    args = parser.parse_args(argv)
    if args.cmd == "keygen":
        sys.stdout.write(generate_private_key())
        return 0
    signer = signer_from_settings(load_settings().signing)
    sys.stderr.write(f"key id {signer.key_id}\n")
    sys.stdout.write(signer.public_pem())
    return 0
