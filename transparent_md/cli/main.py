"""`transparent-md` entry point: one sub-command per module, loaded on demand.

Only the chosen verb's module is imported, so `instance list` does not pay for the
daemon's imports (pyroute2, asyncio, bcc) or the lab's; `--help` and a mistyped verb
load every module so the listing stays complete.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from transparent_md.errors import UserError

# verb -> module under transparent_md.cli; each module has register(subparsers).
VERBS = {
    "run": "run",
    "status": "status",
    "identity": "identity",
    "instance": "instance",
    "libvirt-hook": "libvirt_hook",
    "dhcp-option": "dhcp_option",
    "demo": "demo",
    "bench": "bench",
}


class _Version(argparse.Action):
    """--version, with the version looked up only when asked (see transparent_md)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import transparent_md

        print(f"transparent-md {transparent_md.__version__}")
        parser.exit()


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser for `verb` alone, or for every verb when `verb` is None or unknown."""
    parser = argparse.ArgumentParser(
        prog="transparent-md",
        description=(
            "Instance-metadata service for Linux hypervisors. Guests on a bridge reach "
            "169.254.169.254 through an eBPF program on their port; no namespace per "
            "network, no route in the guest."
        ),
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show program's version number and exit")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    chosen = [VERBS[verb]] if verb in VERBS else list(VERBS.values())
    for module_name in chosen:
        module = importlib.import_module(f"transparent_md.cli.{module_name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    # The top-level parser's only option is --version: a verb, if any, comes first.
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"transparent-md: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
