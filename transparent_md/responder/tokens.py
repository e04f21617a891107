"""IMDSv2 session tokens: issued by PUT /latest/api/token, checked on every request.

A token is `expiry | nonce | HMAC(secret, instance-id | expiry | nonce)`, so the
authority keeps no per-token state, a token only verifies for the instance it was
issued to, and restarting the responder (new secret) invalidates all tokens, as a
reboot does on EC2. Verified tokens are memoised to keep the check off the hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time

# AWS's default PUT response hop limit: a token reply leaves with this IP TTL, so it
# cannot cross a router (a proxy or container network in the guest).
DEFAULT_TOKEN_HOP_LIMIT = 1
# AWS accepts 1 second to 6 hours.
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 21600
# Digits a TTL may have once leading zeros are dropped: a header value is checked
# before it is converted (int() of thousands of digits raises, and costs time).
MAX_TTL_DIGITS = len(str(MAX_TTL_SECONDS))
TTL_REQUEST_HEADER = b"x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = b"x-aws-ec2-metadata-token"
SECRET_BYTES = 32
# Truncated HMAC-SHA256: 128 bits is beyond guessing within a 6 h token life.
TAG_BYTES = 16
_PAYLOAD = struct.Struct(">dQ")  # monotonic expiry time, random nonce
# Every token this authority issues has this length: anything else is refused
# before it is decoded.
TOKEN_LENGTH = len(base64.urlsafe_b64encode(bytes(_PAYLOAD.size + TAG_BYTES)))
# Bound on memoised verifications; the memo is simply cleared when full.
MEMO_LIMIT = 4096


class TokenAuthority:
    """Issues and verifies tokens for one responder process."""

    def __init__(self, clock=time.monotonic, secret: bytes | None = None) -> None:
        # Worker processes of one daemon share a secret, so a token issued on one
        # connection verifies on any other (CLOCK_MONOTONIC is system-wide).
        if secret is not None and len(secret) < SECRET_BYTES:
            raise ValueError(f"token secret must be at least {SECRET_BYTES} bytes")
        self._secret = secret or os.urandom(SECRET_BYTES)
        self._clock = clock
        self._memo: dict[tuple[bytes, str], float] = {}

    @staticmethod
    def parse_ttl(raw: bytes | None) -> int | None:
        """The requested TTL, or None when missing or outside 1..21600."""
        if raw is None:
            return None
        digits = raw.strip()
        if not digits.isdigit() or len(digits.lstrip(b"0")) > MAX_TTL_DIGITS:
            return None
        ttl = int(digits.lstrip(b"0") or b"0")
        return ttl if MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS else None

    def issue(self, instance_id: str, ttl: int) -> bytes:
        payload = _PAYLOAD.pack(self._clock() + ttl, int.from_bytes(os.urandom(8), "big"))
        return base64.urlsafe_b64encode(payload + self._tag(instance_id, payload))

    def is_valid(self, token: bytes, instance_id: str) -> bool:
        """True if `token` was issued here for `instance_id` and has not expired."""
        key = (token, instance_id)
        expiry = self._memo.get(key)
        if expiry is None:
            expiry = self._verify(token, instance_id)
            if expiry is None:
                return False
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = expiry
        if self._clock() < expiry:
            return True
        self._memo.pop(key, None)
        return False

    def memo_size(self) -> int:
        """Verifications memoised now (bounded by MEMO_LIMIT)."""
        return len(self._memo)

    def _verify(self, token: bytes, instance_id: str) -> float | None:
        if len(token) != TOKEN_LENGTH:
            return None
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _PAYLOAD.size + TAG_BYTES:
            return None
        payload, tag = raw[:_PAYLOAD.size], raw[_PAYLOAD.size:]
        if not hmac.compare_digest(tag, self._tag(instance_id, payload)):
            return None
        return _PAYLOAD.unpack(payload)[0]

    def _tag(self, instance_id: str, payload: bytes) -> bytes:
        message = instance_id.encode() + b"\0" + payload
        return hmac.digest(self._secret, message, hashlib.sha256)[:TAG_BYTES]
