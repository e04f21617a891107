"""Instance records for the run: one per guest, padded with others to a fleet's size.

The daemon holds all of them while it is measured, so its RSS is the RSS of a
hypervisor with that many instances, and lookups happen in a full store.
"""

from __future__ import annotations

from collections.abc import Iterable

from transparent_md.lab.bench.topology import BenchGuest
from transparent_md.store import open_store, parse_record

# Records the daemon holds during the run (issue 5: RSS with 10,000 instances).
DEFAULT_RECORDS = 10_000
# A cloud-config of typical size: the crawl fetches it like cloud-init does.
USER_DATA = "#cloud-config\npackage_update: false\nruncmd:\n  - [echo, booted]\n"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchAAA bench"
# Body every fixed-body server returns: as long as an instance id answer.
FIXED_BODY = "i-benchg00000"
# The path wrk asks every metadata server for: a leaf cloud-init and scripts read most.
WRK_PATH = "/latest/meta-data/instance-id"


def guest_record(guest: BenchGuest) -> dict:
    return {
        "instance_id": guest.instance_id,
        "mac": guest.mac,
        "ip": guest.ip,
        "ipv6": [guest.ipv6] if guest.ipv6 else [],
        "bridge": guest.bridge,
        "hostname": guest.instance_id,
        "local_hostname": guest.instance_id,
        "user_data": USER_DATA,
        "ssh_keys": {"bench": SSH_KEY},
        "security_groups": ["default"],
    }


def filler_record(serial: int) -> dict:
    """A MAC-only instance nobody in the run asks for (MACs 06:..: never a guest's)."""
    mac = ":".join(f"{b:02x}" for b in (6, 0, *serial.to_bytes(4, "big")))
    return {"instance_id": f"i-fill{serial:08d}", "mac": mac, "hostname": f"fill{serial}",
            "user_data": USER_DATA, "ssh_keys": {"bench": SSH_KEY}}


def write_store(path: str, guests: Iterable[BenchGuest], total: int) -> int:
    """Create the store at `path`: every guest plus fillers up to `total`; returns count."""
    raws = [guest_record(g) for g in guests]
    raws += [filler_record(i) for i in range(max(0, total - len(raws)))]
    store = open_store(path)
    try:
        store.put_many([parse_record(r, r["instance_id"]) for r in raws])
    finally:
        store.close()
    return len(raws)
