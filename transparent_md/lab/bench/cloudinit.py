"""The requests a booting cloud-init (EC2 datasource, 22.x) makes, as one coroutine.

Order and shape follow cloud-init: token PUT, the wait-for-service probe on the
oldest API version, the newer-version probes (404 moves on), user-data, then a crawl
of the meta-data tree through its directory listings (`0=name` entries are
subtrees), then the instance-identity tree. Transport is injected (`Fetch`), so the
sequence can be tested without a network and driven from any namespace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# cloud-init's DataSourceEc2.min_metadata_version: the wait-for-service probe.
MIN_VERSION = "2009-04-04"
# cloud-init 22.4's extended_metadata_versions, probed newest first.
EXTENDED_VERSIONS = ("2021-03-23", "2018-09-24", "2016-09-02")
TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
# cloud-init asks for the longest token lifetime EC2 allows (6 h).
TOKEN_TTL_S = "21600"
# A tree bigger than this is a responder bug (a listing that names itself), not data.
MAX_CRAWL_REQUESTS = 500

OK = frozenset({200})
OK_OR_MISSING = frozenset({200, 404})

# fetch(method, path, headers, accepted statuses) -> (status, body), or None if it
# failed: no answer, or a status not accepted (the transport records failures and
# latencies).
Fetch = Callable[[str, str, dict[str, str], frozenset[int]],
                 Awaitable[tuple[int, bytes] | None]]


async def boot(fetch: Fetch) -> None:
    """One guest's metadata requests, start to finish; failures end the sequence early."""
    token = await fetch("PUT", TOKEN_PATH, {TTL_HEADER: TOKEN_TTL_S}, OK)
    if token is None:
        return
    headers = {TOKEN_HEADER: token[1].decode()}
    if await fetch("GET", f"/{MIN_VERSION}/meta-data/instance-id", headers, OK) is None:
        return
    version = MIN_VERSION
    for candidate in EXTENDED_VERSIONS:
        answer = await fetch("GET", f"/{candidate}/meta-data/instance-id", headers,
                             OK_OR_MISSING)
        if answer is not None and answer[0] == 200:
            version = candidate
            break
    await fetch("GET", f"/{version}/user-data", headers, OK_OR_MISSING)
    budget = [MAX_CRAWL_REQUESTS]
    await crawl(fetch, f"/{version}/meta-data/", headers, budget)
    await crawl(fetch, f"/{version}/dynamic/instance-identity/", headers, budget)


def listing_children(listing: bytes) -> list[str]:
    """Relative paths named by a listing: `x/` subtree, `x` leaf, `0=name` -> `0/`."""
    out = []
    for line in listing.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        key, eq, _name = line.partition("=")
        out.append(f"{key}/" if eq else line)
    return out


async def crawl(fetch: Fetch, directory: str, headers: dict[str, str],
                budget: list[int]) -> None:
    """Fetch `directory` (ends with /), then every leaf and subtree it lists."""
    if budget[0] <= 0:
        return
    budget[0] -= 1
    answer = await fetch("GET", directory, headers, OK)
    if answer is None:
        return
    for child in listing_children(answer[1]):
        if budget[0] <= 0:
            return
        if child.endswith("/"):
            await crawl(fetch, directory + child, headers, budget)
        else:
            budget[0] -= 1
            await fetch("GET", directory + child, headers, OK)
