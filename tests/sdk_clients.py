"""The official metadata clients a guest runs, driven from a test inside a guest namespace.

- the AWS SDK for JavaScript v3 (tests/node_clients/read_metadata.cjs, packages in the
  checkout's .node/ from tests/node_clients/package-lock.json, installed by scripts/setup),
- Amazon's `ec2-metadata` (Debian amazon-ec2-utils) and Canonical's `ec2metadata`
  (Debian cloud-guest-utils), which print what they read.
botocore and cloud-init are driven by tests/clients.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = CHECKOUT / "tests" / "node_clients" / "read_metadata.cjs"
NODE_MODULES = CHECKOUT / ".node" / "node_modules"
NODE_PACKAGES = ("@aws-sdk/ec2-metadata-service", "@smithy/credential-provider-imds")
EC2_METADATA = "/usr/bin/ec2-metadata"  # amazon-ec2-utils
EC2METADATA = "/usr/bin/ec2metadata"  # cloud-guest-utils
# Bound on one client run: a hung client fails the test instead of the suite.
CLIENT_TIMEOUT_SECONDS = 60


def missing_tools() -> list[str]:
    """What scripts/setup would install and is not here (empty when all is ready)."""
    missing = [tool for tool in ("node",) if shutil.which(tool) is None]
    missing += [p for p in (EC2_METADATA, EC2METADATA) if not os.path.exists(p)]
    missing += [p for p in NODE_PACKAGES if not (NODE_MODULES / p / "package.json").exists()]
    return missing


def _run(netns: str, command: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, *command], capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT_SECONDS, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def aws_sdk_js(netns: str, settings: dict[str, str] | None = None) -> dict:
    """MetadataService (IMDSv2) values and fromInstanceMetadata() credentials, as JSON.

    `settings`: AWS_* variables for the SDK (e.g. the IPv6 endpoint mode)."""
    # The SDK takes its endpoint and IMDS settings from AWS_* variables and ~/.aws/config:
    # none of the caller's may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(NODE_PATH=str(NODE_MODULES), AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, **(settings or {}))
    out = _run(netns, ["node", str(NODE_SCRIPT)], env=env)
    return json.loads(out.strip().splitlines()[-1])


def amazon_ec2_metadata(netns: str, *options: str) -> dict[str, str]:
    """`ec2-metadata OPTION...`: its `name: value` lines as a dict (first line of each)."""
    out = _run(netns, [EC2_METADATA, *options])
    values: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"^([a-z0-9-]+): ?(.*)$", line)
        if match and match.group(1) not in values:
            values[match.group(1)] = match.group(2)
    return values


def amazon_ec2_metadata_raw(netns: str, *options: str) -> str:
    return _run(netns, [EC2_METADATA, *options])


def canonical_ec2metadata(netns: str, option: str) -> str:
    """`ec2metadata --OPTION`: the value it prints, trailing newline removed."""
    return _run(netns, [EC2METADATA, f"--{option}"]).rstrip("\n")
