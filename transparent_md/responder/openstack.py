"""The OpenStack metadata tree (`/openstack/<version>/meta_data.json` and friends).

Like nova's metadata API: `meta_data.json` is always there, `user_data` only when
set; `password` is the one path a guest may write (see dispatch).
"""

from __future__ import annotations

import json

from transparent_md.responder.http import OCTETS, Reply
from transparent_md.responder.tree import TreeBuilder
from transparent_md.store.record import Instance

# nova's dated versions (cloud-init picks the newest it knows), then `latest`.
VERSIONS = (
    "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06",
    "2017-02-22", "2018-08-27", "2020-10-14", "latest",
)
VERSION_SET = frozenset(v.encode() for v in VERSIONS)
ROOT_LISTING = Reply(200, "\n".join(VERSIONS).encode())
PASSWORD_FILE = b"password"
# Link id nova-style network_data uses when we generate it ourselves.
DEFAULT_LINK_ID = "tap0"


def render(instance: Instance, mac: str, ip: str) -> dict[bytes, Reply]:
    """Every file under one OpenStack version, keyed by file name (b"" = listing).

    `password` is listed here but answered live by the dispatcher: the guest writes it.
    """
    t = TreeBuilder()
    t.json("meta_data.json", _dumps(meta_data(instance)))
    t.json("network_data.json", _dumps(instance.network_data or network_data(instance, mac, ip)))
    t.text("password", "")
    if instance.user_data is not None:
        t.raw("user_data", Reply(200, instance.user_data, OCTETS))
    vendor = instance.vendor_data
    t.json("vendor_data.json", _dumps(vendor if vendor is not None else {}))
    t.json("vendor_data2.json", _dumps({"static": vendor} if vendor is not None else {}))
    t.listing("", version_listing(instance))
    return t.build()


def version_listing(instance: Instance) -> list[str]:
    """`/openstack/<version>/` in nova's order (`InstanceMetadata._handle_version`)."""
    names = ["meta_data.json"]
    if instance.user_data is not None:
        names.append("user_data")
    names += ["password", "vendor_data.json", "network_data.json", "vendor_data2.json"]
    return names


def meta_data(instance: Instance) -> dict:
    keys = dict(instance.ssh_keys)
    return {
        "uuid": instance.openstack_uuid,
        "name": instance.hostname,
        "hostname": instance.local_hostname,
        "availability_zone": instance.availability_zone,
        "public_keys": keys,
        "keys": [{"name": n, "type": "ssh", "data": k} for n, k in instance.ssh_keys],
        "launch_index": instance.launch_index,
        "project_id": instance.openstack_project_id,
        "meta": dict(instance.openstack_meta),
        "devices": [],
    }


def network_data(instance: Instance, mac: str, ip: str) -> dict:
    """One link on the guest's MAC, configured by DHCP (IPv4) and router advertisements
    (SLAAC, for a record with IPv6 addresses): what a single-NIC nova guest sees. A record
    with IPv6 addresses and no IPv4 one is an IPv6-only guest: no DHCP network."""
    networks = []
    if instance.ip or not instance.ipv6:
        networks.append({"id": "network0", "type": "ipv4_dhcp", "link": DEFAULT_LINK_ID,
                         "network_id": ""})
    if instance.ipv6:
        networks.append({"id": f"network{len(networks)}", "type": "ipv6_slaac",
                         "link": DEFAULT_LINK_ID, "network_id": ""})
    return {
        "links": [{"id": DEFAULT_LINK_ID, "type": "phy", "ethernet_mac_address": mac,
                   "vif_id": "", "mtu": None}],
        "networks": networks,
        "services": [],
    }


def _dumps(document: object) -> bytes:
    return json.dumps(document).encode()
