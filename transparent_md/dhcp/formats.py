"""Render a classless-route set as configuration for the DHCP server an operator runs.

Every renderer sends the same bytes twice: as option 121 (RFC 3442) and as option 249
(older Windows). Each one was checked against the server's own parser (see tests/dhcp).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from transparent_md.dhcp.classless_routes import (
    OPTION_CLASSLESS_STATIC_ROUTE,
    OPTION_MS_CLASSLESS_STATIC_ROUTE,
    Route,
    encode,
)

# ISC dhcpd knows neither option by name; these are the names its own docs use.
ISC_NAME_121 = "rfc3442-classless-static-routes"
ISC_NAME_249 = "ms-classless-static-routes"
# Kea's built-in name for 121. Kea 2.2 only takes it as raw hex (csv-format false);
# 249 has no Kea definition, and raw hex needs none.
KEA_NAME_121 = "classless-static-route"
KEA_SPACE = "dhcp4"
# dnsmasq's name for 121; it writes 249 only by number.
DNSMASQ_NAME_121 = "option:classless-static-route"
JSON_INDENT = 2


def render_hex(routes: Sequence[Route], tag: str | None = None) -> str:
    """The raw option value, for any server not listed here (121 and 249 alike)."""
    return encode(routes).hex() + "\n"


def render_dnsmasq(routes: Sequence[Route], tag: str | None = None) -> str:
    """`dhcp-option=` lines: 121 readable (dnsmasq encodes it), 249 as raw hex bytes."""
    prefix = f"tag:{tag}," if tag else ""
    pairs = ",".join(f"{r.destination},{r.gateway}" for r in routes)
    raw = ":".join(f"{b:02x}" for b in encode(routes))
    return (
        f"dhcp-option={prefix}{DNSMASQ_NAME_121},{pairs}\n"
        f"dhcp-option={prefix}{OPTION_MS_CLASSLESS_STATIC_ROUTE},{raw}\n"
    )


def render_isc(routes: Sequence[Route], tag: str | None = None) -> str:
    """Option declarations (global scope) and values (global, subnet or host scope)."""
    octets = ", ".join(str(b) for b in encode(routes))
    summary = "; ".join(str(r) for r in routes)
    return (
        "# Declare once, at global scope:\n"
        f"option {ISC_NAME_121} code {OPTION_CLASSLESS_STATIC_ROUTE} = array of integer 8;\n"
        f"option {ISC_NAME_249} code {OPTION_MS_CLASSLESS_STATIC_ROUTE} = array of integer 8;\n"
        f"# Routes: {summary}\n"
        f"option {ISC_NAME_121} {octets};\n"
        f"option {ISC_NAME_249} {octets};\n"
    )


def render_kea(routes: Sequence[Route], tag: str | None = None) -> str:
    """`{"option-data": [...]}`: merge the list into Dhcp4, a subnet4 entry or a class."""
    data = encode(routes).hex().upper()
    option_data = [
        {
            "name": KEA_NAME_121,
            "code": OPTION_CLASSLESS_STATIC_ROUTE,
            "space": KEA_SPACE,
            "csv-format": False,
            "data": data,
        },
        {
            "code": OPTION_MS_CLASSLESS_STATIC_ROUTE,
            "space": KEA_SPACE,
            "csv-format": False,
            "data": data,
        },
    ]
    return json.dumps({"option-data": option_data}, indent=JSON_INDENT) + "\n"


def render_networkd(routes: Sequence[Route], tag: str | None = None) -> str:
    """`[DHCPServer]` lines: networkd has no route type, so send the bytes C-escaped."""
    escaped = "".join(f"\\x{b:02x}" for b in encode(routes))
    return (
        "[DHCPServer]\n"
        f"SendOption={OPTION_CLASSLESS_STATIC_ROUTE}:string:{escaped}\n"
        f"SendOption={OPTION_MS_CLASSLESS_STATIC_ROUTE}:string:{escaped}\n"
    )


Renderer = Callable[[Sequence[Route], str | None], str]

RENDERERS: dict[str, Renderer] = {
    "dnsmasq": render_dnsmasq,
    "isc": render_isc,
    "kea": render_kea,
    "networkd": render_networkd,
    "hex": render_hex,
}

# Only dnsmasq has a per-line selector the helper can fill in.
FORMATS_WITH_TAG = frozenset({"dnsmasq"})


def render(format_name: str, routes: Sequence[Route], tag: str | None = None) -> str:
    """Configuration text for `format_name` (a key of RENDERERS)."""
    return RENDERERS[format_name](routes, tag)
