"""Request targets -> (status, body) as AWS's IMDS and nova's metadata API answer them.

One record, and what a guest with it must read for each target. Each expected answer
says where it comes from:
  [UG]   AWS EC2 user guide, "Retrieve instance metadata" / "Instance metadata categories":
         `/` lists the versions, `/latest/` lists `dynamic`, `meta-data`, `user-data`
         (no slashes), `meta-data/` and below name subdirectories with a trailing `/`;
         `public-keys/` lists `0=name`, `public-keys/0/` lists `openssh-key`;
         network/interfaces/macs/ lists `<mac>/`; a missing resource is 404.
  [JS]   AWS SDK for JavaScript v3, @aws-sdk/ec2-metadata-service `MetadataService.request`:
         path = endpoint pathname "/" + "/latest/...", so it sends `//latest/...`.
  [E2U]  Amazon's `ec2-metadata` (amazon-ec2-utils): `-r`/`-e` read `/latest//meta-data/...`.
  [BOTO] botocore `InstanceMetadataRegionFetcher` reads
         `latest/meta-data/placement/availability-zone/` (a leaf with a trailing slash);
         `InstanceMetadataFetcher` lists
         `iam/security-credentials/` then reads the role.
  [CGU]  Canonical's `ec2metadata` (cloud-guest-utils): version 2009-04-04, lists
         `meta-data/public-keys` with no trailing slash.
  [AEMM] amazon-ec2-metadata-mock (AWS's IMDS simulator): trims a trailing slash before
         routing; `/latest` and `/latest/` list the same; listings sorted.
  [RFC]  RFC 9112 3.2.2 (a server accepts the absolute form; an empty path is "/"),
         RFC 3986 5.2.4 (dot segments); the query is not part of the path.
  [NOVA] nova/api/metadata: paths go through posixpath.normpath; `/openstack` lists the
         versions then `latest`; `_handle_version` lists meta_data.json, user_data (if
         set), password, vendor_data.json, network_data.json, vendor_data2.json.
"""

from __future__ import annotations

from transparent_md.responder import ec2, openstack

MAC = "52:54:00:12:34:56"
IP = "10.0.0.5"
PUBLIC_IP = "203.0.113.7"
USER_DATA = "#cloud-config\nhostname: web-1\n"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqj alice@example"
RECORD = {
    "instance_id": "i-0123456789abcdef0", "mac": MAC, "ip": IP, "bridge": "br0",
    "hostname": "web-1", "availability_zone": "eu-west-1a", "public_ipv4": PUBLIC_IP,
    "ssh_keys": {"alice": SSH_KEY}, "user_data": USER_DATA,
    "iam": {"role": "app-role", "access_key_id": "ASIAWEB", "secret_access_key": "s3cr3t",
            "token": "tok", "expiration": "2099-01-01T00:00:00Z"},
}

VERSIONS = "\n".join(ec2.VERSIONS).encode()
VERSION_LEVEL = b"dynamic\nmeta-data\nuser-data"
META_DATA = b"\n".join([
    b"ami-id", b"ami-launch-index", b"ami-manifest-path", b"block-device-mapping/",
    b"hostname", b"iam/", b"instance-action", b"instance-id", b"instance-life-cycle",
    b"instance-type", b"local-hostname", b"local-ipv4", b"mac", b"network/", b"placement/",
    b"public-ipv4", b"public-keys/", b"reservation-id", b"security-groups", b"services/",
])
MAC_DIR = f"/latest/meta-data/network/interfaces/macs/{MAC}/"
INTERFACE = b"\n".join([
    b"device-number", b"interface-id", b"ipv4-associations/", b"local-hostname",
    b"local-ipv4s", b"mac", b"owner-id", b"public-ipv4s", b"security-groups",
])
OPENSTACK_VERSIONS = "\n".join(openstack.VERSIONS).encode()
OPENSTACK_VERSION_LEVEL = (b"meta_data.json\nuser_data\npassword\nvendor_data.json\n"
                           b"network_data.json\nvendor_data2.json")
NOT_FOUND = (404, None)

# (target as sent on the request line, status, body or None when the body is not checked)
TABLE: list[tuple[str, int, bytes | None]] = [
    ("/", 200, VERSIONS),                                           # [UG]
    ("/latest", 200, VERSION_LEVEL),                                # [AEMM] [UG]
    ("/latest/", 200, VERSION_LEVEL),                               # [UG]
    ("/2009-04-04/", 200, VERSION_LEVEL),                           # [UG] every version
    ("//latest//meta-data/", 200, META_DATA),                       # [JS] [E2U] [UG]
    ("//latest/meta-data/instance-id", 200, b"i-0123456789abcdef0"),  # [JS]
    ("/latest//meta-data/reservation-id", 200, None),               # [E2U]
    ("http://169.254.169.254/latest/meta-data/", 200, META_DATA),   # [RFC]
    ("HTTP://169.254.169.254:80/latest/meta-data/mac", 200, MAC.encode()),  # [RFC]
    ("http://169.254.169.254", 200, VERSIONS),                      # [RFC] empty path is /
    ("/latest/meta-data", 200, META_DATA),                          # [AEMM] [CGU]
    ("/latest/meta-data/?refresh=1", 200, META_DATA),               # [RFC]
    ("/latest/meta-data/placement/availability-zone/", 200, b"eu-west-1a"),  # [BOTO]
    ("/2009-04-04/meta-data/public-keys", 200, b"0=alice"),         # [CGU] [UG]
    ("/latest/meta-data/public-keys/", 200, b"0=alice"),            # [UG]
    ("/latest/meta-data/public-keys/0/", 200, b"openssh-key"),      # [UG]
    ("/latest/meta-data/public-keys/0/openssh-key", 200, SSH_KEY.encode() + b"\n"),  # [UG]
    ("/latest/meta-data/block-device-mapping/", 200, b"ami\nroot"),  # [UG]
    ("/latest/meta-data/iam/", 200, b"info\nsecurity-credentials/"),  # [UG]
    ("/latest/meta-data/iam/security-credentials/", 200, b"app-role"),  # [UG] [BOTO]
    ("/latest/meta-data/network/", 200, b"interfaces/"),            # [UG]
    ("/latest/meta-data/network/interfaces/", 200, b"macs/"),       # [UG]
    ("/latest/meta-data/network/interfaces/macs/", 200, f"{MAC}/".encode()),  # [UG]
    (MAC_DIR, 200, INTERFACE),                                      # [UG]
    (MAC_DIR + "ipv4-associations/", 200, PUBLIC_IP.encode()),      # [UG]
    ("/latest/meta-data/placement/", 200, b"availability-zone\nregion"),  # [UG]
    ("/latest/meta-data/services/", 200, b"domain\npartition"),     # [UG]
    ("/latest/dynamic/", 200, b"instance-identity/"),               # [UG]
    ("/latest/dynamic/instance-identity/", 200, b"document"),       # [UG] (unsigned here)
    ("/latest/user-data", 200, USER_DATA.encode()),                 # [UG]
    ("/latest/user-data/", 200, USER_DATA.encode()),                # [AEMM]
    ("/latest/meta-data/./instance-id", 200, b"i-0123456789abcdef0"),  # [RFC]
    ("/latest/meta-data/nope/../instance-id", 200, b"i-0123456789abcdef0"),  # [RFC]
    ("/../latest/meta-data/local-ipv4", 200, IP.encode()),          # [RFC] root is a floor
    ("/latest/nope", *NOT_FOUND),                                   # [UG]
    ("/latest/meta-data/instance-id/more", *NOT_FOUND),             # [UG]
    ("/latest/meta-data/%69nstance-id", *NOT_FOUND),                # no decoding: one name
    ("/9999-01-01/meta-data/", *NOT_FOUND),                         # [UG] unknown version
    ("/nope/", *NOT_FOUND),                                         # [UG]
    ("*", *NOT_FOUND),                                              # [RFC] asterisk form
    ("/openstack", 200, OPENSTACK_VERSIONS),                        # [NOVA]
    ("/openstack/", 200, OPENSTACK_VERSIONS),                       # [NOVA]
    ("//openstack//latest/", 200, OPENSTACK_VERSION_LEVEL),         # [NOVA] normpath
    ("/openstack/latest", 200, OPENSTACK_VERSION_LEVEL),            # [NOVA]
    ("/openstack/2012-08-10/meta_data.json/", 200, None),           # [NOVA]
    ("http://169.254.169.254/openstack/latest/user_data", 200, USER_DATA.encode()),  # [RFC]
    ("/openstack/latest/nope.json", *NOT_FOUND),                    # [NOVA]
    ("/openstack/1999-01-01/", *NOT_FOUND),                         # [NOVA]
]

# A handful of rows also sent through the real datapath by a guest (tests/test_sdk_clients).
THROUGH_DATAPATH = ["/latest", "/latest/", "//latest//meta-data/",
                    "http://169.254.169.254/latest/meta-data/", "/openstack/latest",
                    "/latest/meta-data/public-keys/0/"]


def expected(target: str) -> tuple[int, bytes | None]:
    for row_target, status, body in TABLE:
        if row_target == target:
            return status, body
    raise KeyError(target)


def role_credentials() -> dict:
    """What `iam/security-credentials/app-role` carries, as the SDKs parse it."""
    iam = RECORD["iam"]
    return {"AccessKeyId": iam["access_key_id"], "SecretAccessKey": iam["secret_access_key"],
            "Token": iam["token"], "Expiration": iam["expiration"]}

