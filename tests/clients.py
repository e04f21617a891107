"""Real metadata clients, run as subprocesses so a test can run them anywhere.

Each helper takes a base URL (e.g. "http://127.0.0.1:8080" on loopback, or
"http://169.254.169.254" from inside a guest namespace with `netns="guest1"`) and
returns what the client parsed. cloud-init runs under Debian's /usr/bin/python3 (its
package lives there); botocore under this venv's interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

DEBIAN_PYTHON = "/usr/bin/python3"
# Bound on one client run: a hung client fails the test instead of the suite.
CLIENT_TIMEOUT_SECONDS = 60

_CLOUDINIT_EC2 = r"""
import json, sys
from cloudinit import helpers
from cloudinit.sources import DataSourceEc2 as ec2ds
base, cloud = sys.argv[1], sys.argv[2]
ds = ec2ds.DataSourceEc2(sys_cfg={}, distro=None, paths=helpers.Paths({}))
ds._cloud_name = cloud  # "aws" -> IMDSv2 token crawl; anything else -> IMDSv1 crawl
ds.ds_cfg = {"metadata_urls": [base], "max_wait": 10, "timeout": 5}
crawled = ds.crawl_metadata()
ud = crawled.get("user-data", b"")
crawled["user-data"] = ud.decode() if isinstance(ud, bytes) else ud
crawled["_token_used"] = bool(getattr(ds, "_api_token", None))
print(json.dumps(crawled))
"""

_CLOUDINIT_OPENSTACK = r"""
import json, sys
from cloudinit.sources.helpers import openstack
result = openstack.MetadataReader(sys.argv[1], timeout=5, retries=0).read_v2()
ud = result.get("userdata")
result["userdata"] = ud.decode() if isinstance(ud, bytes) else ud
print(json.dumps(result, default=str))
"""

_CLOUDINIT_NOCLOUD = r"""
import json, sys
from cloudinit import util
md, ud, vd = util.read_seeded(base=sys.argv[1], timeout=5, retries=0)
print(json.dumps({"meta-data": md, "user-data": ud.decode() if ud is not None else None,
                  "vendor-data": vd.decode() if vd is not None else None}))
"""

_BOTOCORE_ROLE = r"""
import json, sys
from botocore.utils import InstanceMetadataFetcher
fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=sys.argv[1])
fetcher._disabled = False
print(json.dumps(fetcher.retrieve_iam_role_credentials()))
"""


_GOOGLE_AUTH = r"""
import json, sys
import urllib3
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.auth.transport.urllib3 import Request
request = Request(urllib3.PoolManager())
pinged = _metadata.ping(request)
credentials = compute_engine.Credentials()
credentials.refresh(request)
print(json.dumps({"ping": pinged, "token": credentials.token,
                  "email": credentials.service_account_email,
                  "expiry": credentials.expiry.isoformat(),
                  "project": _metadata.get_project_id(request)}))
"""


def run_client(code: str, *args: str, python: str = DEBIAN_PYTHON,
               netns: str | None = None, env: dict[str, str] | None = None) -> dict:
    """Run `code` with `args`, optionally inside network namespace `netns`; parse JSON."""
    command = [python, "-c", code, *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_SECONDS, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"client failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cloudinit_ec2_crawl(base_url: str, *, imdsv2: bool, netns: str | None = None) -> dict:
    """cloud-init's EC2 datasource crawl: {'meta-data', 'user-data', 'dynamic'?, ...}."""
    return run_client(_CLOUDINIT_EC2, base_url, "aws" if imdsv2 else "unknown", netns=netns)


def cloudinit_openstack_read(base_url: str, *, netns: str | None = None) -> dict:
    """cloud-init's OpenStack MetadataReader(base_url).read_v2() result."""
    return run_client(_CLOUDINIT_OPENSTACK, base_url, netns=netns)


def cloudinit_nocloud_read(seed_url: str, *, netns: str | None = None) -> dict:
    """cloud-init's NoCloud seed read over HTTP (`util.read_seeded`, what `ds=nocloud-net;
    s=SEED_URL` runs): {'meta-data', 'user-data', 'vendor-data'}."""
    return run_client(_CLOUDINIT_NOCLOUD, seed_url, netns=netns)


def botocore_role_credentials(base_url: str, *, netns: str | None = None,
                              python: str = sys.executable) -> dict:
    """botocore's InstanceMetadataFetcher credentials (it always uses IMDSv2 tokens)."""
    return run_client(_BOTOCORE_ROLE, base_url, python=python, netns=netns)


def google_auth_compute_engine(host: str, *, netns: str | None = None) -> dict:
    """google-auth's compute-engine credentials and project id, with the metadata server
    at `host` (GCE_METADATA_HOST / GCE_METADATA_IP, as google-auth reads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCE_", "GOOGLE_"))}
    env.update(GCE_METADATA_HOST=host, GCE_METADATA_IP=host)
    return run_client(_GOOGLE_AUTH, python=sys.executable, netns=netns, env=env)
