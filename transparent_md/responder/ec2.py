"""The EC2 metadata tree (`/<version>/meta-data/...`, `user-data`, `dynamic/...`).

Rendered once per record revision (and guest MAC/IP when the record leaves them
open) into a flat table of prepared replies. Every version serves the same tree:
clients such as cloud-init pick the newest version they know from the root listing.
"""

from __future__ import annotations

import json

from transparent_md.responder.http import OCTETS, Reply
from transparent_md.responder.tree import TreeBuilder
from transparent_md.store.record import Instance

# Versions AWS lists at `/`; cloud-init starts at 2009-04-04 and probes 2016-09-02,
# 2018-09-24 and 2021-03-23; SDKs use `latest`.
VERSIONS = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
    "2008-02-01", "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12",
    "2014-02-25", "2014-11-05", "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02",
    "2018-03-28", "2018-08-17", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03",
    "2021-03-23", "2021-07-15", "2022-09-24", "latest",
)
VERSION_SET = frozenset(v.encode() for v in VERSIONS)
ROOT_LISTING = Reply(200, "\n".join(VERSIONS).encode())

# Block device names a Linux guest sees for its root disk under KVM/virtio.
ROOT_DEVICE = "/dev/vda"
# The identity document's schema version, as AWS serves it.
IDENTITY_DOCUMENT_VERSION = "2017-09-30"
ARCHITECTURE = "x86_64"


def render(instance: Instance, mac: str, ip: str) -> dict[bytes, Reply]:
    """Every EC2 path of one instance, keyed without version prefix or slashes."""
    t = TreeBuilder()
    md = "meta-data/"
    t.text(md + "ami-id", instance.ami_id)
    t.text(md + "ami-launch-index", str(instance.launch_index))
    t.text(md + "ami-manifest-path", "(unknown)")
    t.text(md + "block-device-mapping/ami", ROOT_DEVICE)
    t.text(md + "block-device-mapping/root", ROOT_DEVICE)
    t.text(md + "hostname", instance.hostname)
    t.text(md + "instance-action", "none")
    t.text(md + "instance-id", instance.instance_id)
    t.text(md + "instance-life-cycle", "on-demand")
    t.text(md + "instance-type", instance.instance_type)
    t.text(md + "local-hostname", instance.local_hostname)
    if ip:  # an IPv6-only guest whose record has no IPv4 address has none, as on EC2
        t.text(md + "local-ipv4", ip)
    if instance.ipv6:
        t.text(md + "ipv6", instance.ipv6[0])
    t.text(md + "mac", mac)
    _network(t, instance, mac, ip)
    t.text(md + "placement/availability-zone", instance.availability_zone)
    t.text(md + "placement/region", instance.region)
    if instance.public_hostname:
        t.text(md + "public-hostname", instance.public_hostname)
    if instance.public_ipv4:
        t.text(md + "public-ipv4", instance.public_ipv4)
    _public_keys(t, instance)
    t.text(md + "reservation-id", instance.reservation_id)
    t.text(md + "security-groups", "\n".join(instance.security_groups))
    t.text(md + "services/domain", "amazonaws.com")
    t.text(md + "services/partition", "aws")
    _iam(t, instance)
    top = ["dynamic", "meta-data"]
    if instance.user_data is not None:
        t.raw("user-data", Reply(200, instance.user_data, OCTETS))
        top.append("user-data")
    t.json("dynamic/instance-identity/document", identity_document(instance, ip))
    # The version level (`/latest/`) is the one listing whose directories AWS names
    # without a trailing slash (user guide, "Retrieve instance metadata").
    t.listing("", top)
    return t.build()


def _network(t: TreeBuilder, instance: Instance, mac: str, ip: str) -> None:
    base = f"meta-data/network/interfaces/macs/{mac}/"
    t.text(base + "device-number", "0")
    t.text(base + "interface-id", "eni-" + mac.replace(":", ""))
    t.text(base + "local-hostname", instance.local_hostname)
    if ip:
        t.text(base + "local-ipv4s", ip)
    if instance.ipv6:
        t.text(base + "ipv6s", "\n".join(instance.ipv6))
    t.text(base + "mac", mac)
    t.text(base + "owner-id", instance.account_id)
    if instance.public_hostname:
        t.text(base + "public-hostname", instance.public_hostname)
    if instance.public_ipv4:
        t.text(base + "public-ipv4s", instance.public_ipv4)
        t.text(base + f"ipv4-associations/{instance.public_ipv4}", ip)
    t.text(base + "security-groups", "\n".join(instance.security_groups))


def _public_keys(t: TreeBuilder, instance: Instance) -> None:
    if not instance.ssh_keys:
        return
    for index, (_name, key) in enumerate(instance.ssh_keys):
        t.text(f"meta-data/public-keys/{index}/openssh-key", key + "\n")
    t.listing("meta-data/public-keys",
              [f"{i}={name}" for i, (name, _key) in enumerate(instance.ssh_keys)])


def _iam(t: TreeBuilder, instance: Instance) -> None:
    iam = instance.iam
    if iam is None:
        return
    arn_base = f"arn:aws:iam::{instance.account_id}"
    t.json("meta-data/iam/info", _dumps({
        "Code": "Success",
        "LastUpdated": iam.last_updated,
        "InstanceProfileArn": f"{arn_base}:instance-profile/{iam.role}",
        "InstanceProfileId": "AIPA" + instance.instance_id.upper().replace("-", "")[:17],
    }))
    t.json(f"meta-data/iam/security-credentials/{iam.role}", _dumps({
        "Code": "Success",
        "LastUpdated": iam.last_updated,
        "Type": "AWS-HMAC",
        "AccessKeyId": iam.access_key_id,
        "SecretAccessKey": iam.secret_access_key,
        "Token": iam.token,
        "Expiration": iam.expiration,
    }))


def identity_document(instance: Instance, ip: str) -> bytes:
    """The fields botocore, cloud-init and the SDKs read; region = zone minus letter."""
    return _dumps({
        "accountId": instance.account_id,
        "architecture": ARCHITECTURE,
        "availabilityZone": instance.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": instance.ami_id,
        "instanceId": instance.instance_id,
        "instanceType": instance.instance_type,
        "kernelId": None,
        "pendingTime": "1970-01-01T00:00:00Z",
        "privateIp": ip,
        "ramdiskId": None,
        "region": instance.region,
        "version": IDENTITY_DOCUMENT_VERSION,
    })


def _dumps(document: object) -> bytes:
    return json.dumps(document, indent=2).encode()
