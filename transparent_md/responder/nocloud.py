"""cloud-init's NoCloud seed over HTTP (`/nocloud/meta-data`, `user-data`, ...).

An image told `ds=nocloud-net;s=http://169.254.169.254/nocloud/` (SMBIOS serial or the
kernel command line; cloud-init 22.4 needs the `nocloud-net` form for an http seed)
fetches four files from that directory. They are rendered from the same record as the
EC2 and OpenStack trees, per guest:
- `meta-data`: YAML with `instance-id`, `local-hostname` and the SSH keys;
- `user-data`: the record's user-data, or an empty cloud-config (NoCloud needs the file);
- `vendor-data`: the record's vendor-data when it is text, else an empty cloud-config;
- `network-config`: version 2, the guest's interface matched by MAC, on DHCP.
"""

from __future__ import annotations

import yaml

from transparent_md.responder.http import OCTETS, Reply
from transparent_md.responder.tree import TreeBuilder
from transparent_md.store.record import Instance

PREFIX = b"/nocloud"
# What cloud-init reads as "nothing to do": a cloud-config with no keys.
EMPTY_CLOUD_CONFIG = b"#cloud-config\n{}\n"
# The interface name network-config v2 gives the guest's NIC (matched by MAC).
INTERFACE_ID = "eth0"
FILES = ("meta-data", "user-data", "vendor-data", "network-config")


def render(instance: Instance, mac: str, ip: str) -> dict[bytes, Reply]:
    """The seed directory of one instance, keyed by file name (b"" is the listing)."""
    t = TreeBuilder()
    t.text("meta-data", _yaml(meta_data(instance)))
    user_data = instance.user_data if instance.user_data is not None else EMPTY_CLOUD_CONFIG
    t.raw("user-data", Reply(200, user_data, OCTETS))
    vendor = instance.vendor_data
    t.raw("vendor-data", Reply(200, vendor.encode() if isinstance(vendor, str)
                               else EMPTY_CLOUD_CONFIG, OCTETS))
    t.text("network-config", _yaml(network_config(mac)))
    t.listing("", list(FILES))
    return t.build()


def meta_data(instance: Instance) -> dict:
    document: dict = {"instance-id": instance.instance_id,
                      "local-hostname": instance.local_hostname}
    if instance.ssh_keys:
        document["public-keys"] = [key for _name, key in instance.ssh_keys]
    return document


def network_config(mac: str) -> dict:
    """Version 2: the NIC with the guest's MAC, on DHCP (the lab's and most hosts' way)."""
    return {"version": 2, "ethernets": {INTERFACE_ID: {
        "match": {"macaddress": mac}, "set-name": INTERFACE_ID, "dhcp4": True}}}


def _yaml(document: dict) -> bytes:
    return yaml.safe_dump(document, default_flow_style=False, sort_keys=False).encode()
