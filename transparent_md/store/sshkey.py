"""OpenSSH public keys as records hold them: one line `TYPE BASE64 [COMMENT]`.

A key is checked the way sshd reads it, not by a guess at its look: the base64 blob must
decode, and the key type it starts with (an SSH string: 4-byte length, then the name)
must be the type the line names. So `not a key`, a truncated paste or a private key is
refused when the record is written, not found out when a guest cannot log in.
"""

from __future__ import annotations

import base64
import binascii

# The longest key type OpenSSH knows is under 50 characters; a blob is at most a few KiB
# (a 16384-bit RSA key), certificates included.
MAX_TYPE_LENGTH = 64
MAX_BLOB_BYTES = 16384


def openssh_key_problem(text: str) -> str | None:
    """None for a well-formed OpenSSH public key line; else what is wrong with it."""
    problem = _problem(text)
    return (f"{text[:24]!r}... is not an OpenSSH public key: {problem} (expected TYPE BASE64 "
            "[COMMENT] as in a .pub file)") if problem else None


def _problem(text: str) -> str | None:
    parts = text.split(None, 2)
    if len(parts) < 2:
        return "no key data after the type"
    key_type, encoded = parts[0], parts[1]
    if len(key_type) > MAX_TYPE_LENGTH or not key_type.isascii():
        return "the key type is too long"
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "its key data is not base64"
    if len(blob) > MAX_BLOB_BYTES:
        return f"its key data is over {MAX_BLOB_BYTES} bytes"
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    named = blob[4:4 + length] if 0 <= length <= MAX_TYPE_LENGTH else b""
    if len(named) != length or named != key_type.encode():
        return f"its key data does not name its type {key_type} (truncated or mixed up?)"
    return None
