"""The IMDSv2 token secret, kept in the daemon's state directory.

Tokens are HMACs under this secret; keeping it in a 0600 file (on /run, so it never
outlives a reboot) means a restarted daemon still accepts the tokens it issued before,
until their TTL, as guests expect.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_BYTES = 32


def load_or_create(path: Path) -> bytes:
    """The secret in `path`, created (mode 0600, directory 0700) if missing or bad."""
    try:
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = os.urandom(SECRET_BYTES)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret
