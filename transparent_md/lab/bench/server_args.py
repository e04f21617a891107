"""The command line of the fixed-body comparison servers: `--listen HOST:PORT --body TEXT`."""

from __future__ import annotations

import argparse


def listen_and_body(description: str | None) -> tuple[str, int, str]:
    """(host, port, body) from the command line, with `description` as the help text."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--body", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    return host, int(port), args.body
