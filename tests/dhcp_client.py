"""A real DHCP client for tests: busybox udhcpc in a namespace, with our own event script.

The script (tests/udhcpc_routes.sh) sets the address, installs option 121 routes (or
249, or the router when neither came) and never touches /etc/resolv.conf, which a
namespace shares with the host. udhcpc exits once it holds a lease (or gave up), so
no process is left behind.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

UDHCPC_SCRIPT = Path(__file__).with_name("udhcpc_routes.sh")
BUSYBOX = "busybox"
# udhcpc only gets options it asks for, unless the server forces them.
REQUESTED_OPTIONS = ("staticroutes", "msstaticroutes", "router", "subnet")
DISCOVER_ATTEMPTS = 5
SECONDS_BETWEEN_DISCOVERS = 1
# Safety net only (never an assertion): udhcpc gives up on its own well before this.
CLIENT_TIMEOUT_SECONDS = 60


@dataclass
class Lease:
    """What the client was told, as udhcpc's script saw it, plus the resulting table."""

    values: dict[str, str]
    route_table: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.values.get("ip", "")

    @property
    def classless_routes(self) -> list[tuple[str, str]]:
        """Option 121 as (destination/len, gateway) pairs."""
        return _pairs(self.values.get("staticroutes", ""))

    @property
    def ms_classless_routes(self) -> list[tuple[str, str]]:
        """Option 249 as (destination/len, gateway) pairs."""
        return _pairs(self.values.get("msstaticroutes", ""))


class DhcpClientError(RuntimeError):
    """udhcpc got no lease; the message carries its output."""


def obtain_lease(ns: str, interface: str, state_dir: Path) -> Lease:
    """Run udhcpc once in `ns` on `interface` until it is bound; return the lease."""
    state_file = state_dir / f"lease-{ns}-{interface}.env"
    state_file.unlink(missing_ok=True)
    argv = [
        "ip", "netns", "exec", ns,
        "env", f"TMD_DHCP_STATE={state_file}",
        BUSYBOX, "udhcpc",
        "-i", interface,
        "-s", str(UDHCPC_SCRIPT),
        "-f", "-q", "-n",
        "-t", str(DISCOVER_ATTEMPTS),
        "-T", str(SECONDS_BETWEEN_DISCOVERS),
    ]
    for option in REQUESTED_OPTIONS:
        argv += ["-O", option]
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_SECONDS
    )
    if res.returncode != 0 or not state_file.exists():
        raise DhcpClientError(
            f"udhcpc in {ns} got no lease (rc={res.returncode}):\n{res.stdout}{res.stderr}"
        )
    values = dict(
        line.split("=", 1) for line in state_file.read_text().splitlines() if "=" in line
    )
    return Lease(values, route_table(ns))


def route_table(ns: str) -> list[str]:
    """`ip -4 route show` in `ns`, one route per entry."""
    res = subprocess.run(
        ["ip", "-n", ns, "-4", "route", "show"], capture_output=True, text=True, check=True
    )
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def _pairs(text: str) -> list[tuple[str, str]]:
    words = text.split()
    return list(zip(words[0::2], words[1::2], strict=True))
