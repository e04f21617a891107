"""Request target -> canonical path, matched the way AWS's IMDS and nova's metadata API do.

Real clients send odd targets, and both services answer them:
- runs of slashes collapse: the AWS SDK for JavaScript v3 sends `//latest/meta-data/...`
  (endpoint pathname "/" + path "/latest/..."), Amazon's own `ec2-metadata` script sends
  `/latest//meta-data/reservation-id`; nova runs every path through `posixpath.normpath`.
- the trailing slash is not significant: botocore reads
  `latest/meta-data/placement/availability-zone/` (a leaf with a slash), Canonical's
  `ec2metadata` lists `meta-data/public-keys` (a directory without one), and AWS's
  metadata mock (amazon-ec2-metadata-mock) trims the slash before it routes.
- the absolute form (`GET http://169.254.169.254/latest/meta-data/ HTTP/1.1`, what a
  client configured with an HTTP proxy sends) names the same resource: RFC 9112 §3.2.2
  says a server must accept it.
- `.` and `..` segments resolve as RFC 3986 §5.2.4 and nova's `normpath` resolve them
  (browsers and curl already do it client side; nothing can climb above the root).
- the query string (and a fragment, which no client should send) is ignored.

The canonical form starts with "/" and has no empty, `.` or `..` segment and no trailing
slash ("/" alone is the root). Percent-escapes are left as they are: the services'
own names never need one, and decoding would let one resource have many spellings.

This runs once per new URL: the dispatcher memoises the route under the raw URL.
"""

from __future__ import annotations

ROOT = b"/"
_SLASH = b"/"
_SCHEMES = (b"http://", b"https://")
# The longest scheme prefix above: a target shorter than this cannot be absolute.
_SCHEME_PREFIX_MAX = max(len(s) for s in _SCHEMES)


def canonical_path(target: bytes) -> bytes | None:
    """The canonical path a request target names, or None if it names no path at all.

    None means the origin form is missing (`*`, `host:port`, garbage): answer 404.
    """
    end = len(target)
    for stop in (b"?", b"#"):
        cut = target.find(stop, 0, end)
        if cut >= 0:
            end = cut
    path = target[:end]
    if path[:1] != _SLASH:
        path = _origin_of_absolute(path)
        if path is None:
            return None
    if b"//" not in path and b"/." not in path:
        # The common case, already canonical but perhaps for a trailing slash.
        return path.rstrip(_SLASH) or ROOT
    kept: list[bytes] = []
    for segment in path.split(_SLASH):
        if not segment or segment == b".":
            continue
        if segment == b"..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    return _SLASH + _SLASH.join(kept)


def _origin_of_absolute(target: bytes) -> bytes | None:
    """The path part of an absolute-form target (`http://host[:port]/path`), else None."""
    head = target[:_SCHEME_PREFIX_MAX].lower()
    for scheme in _SCHEMES:
        if head.startswith(scheme):
            slash = target.find(_SLASH, len(scheme))
            # RFC 9112 §3.2.2 / RFC 3986 §6.2.3: an empty path is "/".
            return ROOT if slash < 0 else target[slash:]
    return None

