"""Request routing: (method, path, token headers, body) + who asked -> a prepared Reply.

Policy lives here and nowhere else: which methods a path allows, when a token is
needed, what an unknown guest sees (404 for everything: it learns nothing).

A GET's route (which prepared reply, and whether IMDSv2 rules apply to it) depends only
on the instance's prepared replies and the URL, so it is memoised on the `Prepared`
(see `prepared.Routes`) under the raw URL; only the token check runs per request. The
URL is put in canonical form (`paths`: slashes collapsed, absolute form accepted, as AWS
and nova match paths) only when a route is computed, so a known URL costs nothing more.
"""

from __future__ import annotations

import logging

from transparent_md.responder import ec2, gce, nocloud, openstack, paths
from transparent_md.responder.http import (
    BAD_REQUEST,
    CONFLICT,
    FORBIDDEN,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SERVER_ERROR,
    UNAUTHORIZED,
    Reply,
    error_reply,
)
from transparent_md.responder.prepared import Prepared, Route
from transparent_md.responder.ratelog import RateLimitedLog
from transparent_md.responder.tokens import TokenAuthority
from transparent_md.store import MAX_PASSWORD_BYTES, PasswordAlreadySet, Store
from transparent_md.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

GET = b"GET"
HEAD = b"HEAD"
PUT = b"PUT"
POST = b"POST"
TOKEN_PATH = b"/latest/api/token"
OPENSTACK_PREFIX = b"/openstack"
_PASSWORD_OK = Reply(200, b"")
_NO_PASSWORD = Reply(200, b"")  # nova answers an unset password with an empty 200
# A fleet store (etcd) that cannot be reached takes no password, and a store file
# locked by another process gives no record: the guest may retry (cloud-init's crawl
# and cloudbase-init do); the Retry-After matches the stores' back-off.
STORE_UNAVAILABLE_RETRY_S = 5
STORE_UNAVAILABLE = error_reply(503, b"Retry-After: %d\r\n" % STORE_UNAVAILABLE_RETRY_S)
_GCE_ROOT = gce.reply(gce.ROOT_LISTING)
_GCE_VERSIONS = gce.reply(b"v1/\n")
_GCE_TOP = b"/computeMetadata"

log = logging.getLogger(__name__)


class Dispatcher:
    """Answers one parsed request; never raises for bad input, only returns 4xx."""

    def __init__(self, store: Store, tokens: TokenAuthority,
                 events: RateLimitedLog | None = None) -> None:
        self.store = store
        self.tokens = tokens
        # A guest can repeat a request that fails at will: one line per interval.
        self._events = events if events is not None else RateLimitedLog(log)

    def respond(self, prepared: Prepared | None, method: bytes, url: bytes,
                token: bytes | None, ttl: bytes | None, forwarded: bool,
                body: bytes) -> tuple[Reply, bool]:
        """The reply, and whether it is a token reply (sent with the IP hop limit)."""
        if method in (GET, HEAD):
            return self.get(prepared, url, token), False
        path = paths.canonical_path(url)
        if method == PUT and path == TOKEN_PATH:
            return self._issue_token(prepared, ttl, forwarded)
        if method == POST and path is not None and path.startswith(OPENSTACK_PREFIX):
            return self._post_password(prepared, path, body), False
        return METHOD_NOT_ALLOWED, False

    def get(self, prepared: Prepared | None, url: bytes, token: bytes | None) -> Reply:
        """The reply to a GET (or HEAD) of `url`: respond() for the commonest request,
        without the arguments only other methods need."""
        if prepared is None:
            return NOT_FOUND
        route = prepared.routes.get(url)
        if route is None:
            path = paths.canonical_path(url)
            if _is_password(path):  # written by the guest: read live, never memoised
                return self._get_password(prepared)
            route = prepared.routes.remember(url, self._route(prepared, path))
        reply, guarded = route
        if guarded:
            if token is not None:
                if not self.tokens.is_valid(token, prepared.instance_id):
                    return UNAUTHORIZED
            elif prepared.imdsv2_required:
                return UNAUTHORIZED
        return reply

    def gce(self, prepared: Prepared | None, url: bytes, flavor: bytes,
            forwarded: bool) -> Reply | gce.Wait:
        """A GET carrying `Metadata-Flavor`: the GCE flavour, with Google's refusals; a
        `wait_for_change` request whose value has not changed is a Wait to hold."""
        if forwarded or flavor != gce.FLAVOR_HEADER_VALUE:
            return gce.FORBIDDEN
        if prepared is None:
            return gce.NOT_FOUND
        path = paths.canonical_path(url)
        if path == paths.ROOT:
            return _GCE_ROOT
        if path == _GCE_TOP:
            return _GCE_VERSIONS
        if path is None or not (path == gce.PREFIX or path.startswith(gce.PREFIX + b"/")):
            return gce.NOT_FOUND
        query = gce.Query(url.partition(b"?")[2].partition(b"#")[0])
        below = path[len(gce.PREFIX) + 1:]
        answer = prepared.gce.answer(below, query)
        if not query.wait_for_change or not isinstance(answer, gce.TaggedReply):
            return answer
        awaited = query.last_etag or answer.etag
        if awaited != answer.etag:
            return answer  # it changed since the guest last saw it
        timeout = query.timeout_sec if query.timeout_sec is not None else gce.DEFAULT_WAIT_S
        return gce.Wait(below, query, awaited, timeout)

    @staticmethod
    def gce_again(prepared: Prepared | None, wait: gce.Wait) -> Reply:
        """What a held long poll would be answered now (its record may have changed)."""
        return gce.NOT_FOUND if prepared is None else prepared.gce.answer(wait.path, wait.query)

    def _route(self, prepared: Prepared, path: bytes | None) -> Route:
        """The reply for a GET of canonical `path`, and whether IMDSv2 token rules guard it."""
        if path is None:
            return NOT_FOUND, False
        if path.startswith(OPENSTACK_PREFIX):
            return self._openstack(prepared, path), False
        if path.startswith(_GCE_TOP):  # without Metadata-Flavor: Google refuses it
            return gce.FORBIDDEN, False
        if path == nocloud.PREFIX or path.startswith(nocloud.PREFIX + b"/"):
            return prepared.nocloud.get(path[len(nocloud.PREFIX) + 1:], NOT_FOUND), False
        if path == TOKEN_PATH:
            return METHOD_NOT_ALLOWED, False  # tokens are only PUT
        return self._ec2(prepared, path)

    @staticmethod
    def _ec2(prepared: Prepared, path: bytes) -> Route:
        if path == paths.ROOT:
            return ec2.ROOT_LISTING, True
        version, _, rest = path[1:].partition(b"/")
        if version not in ec2.VERSION_SET:
            return NOT_FOUND, False
        return prepared.ec2.get(rest, NOT_FOUND), True

    def _openstack(self, prepared: Prepared, path: bytes) -> Reply:
        version, file = _openstack_parts(path)
        if version is None:
            return openstack.ROOT_LISTING if file == b"" else NOT_FOUND
        return prepared.openstack.get(file, NOT_FOUND)

    def _issue_token(self, prepared: Prepared | None, ttl_header: bytes | None,
                     forwarded: bool) -> tuple[Reply, bool]:
        if forwarded:  # a proxy in the guest is relaying: refuse, as AWS does
            return FORBIDDEN, False
        ttl = self.tokens.parse_ttl(ttl_header)
        if ttl is None:
            return BAD_REQUEST, False
        if prepared is None:
            return NOT_FOUND, False
        token = self.tokens.issue(prepared.instance_id, ttl)
        header = b"X-Aws-Ec2-Metadata-Token-Ttl-Seconds: %d\r\n" % ttl
        return Reply(200, token, extra_headers=header), True

    def _get_password(self, prepared: Prepared) -> Reply:
        try:
            password = self.store.password(prepared.instance_id)
        except StoreUnavailable:
            return STORE_UNAVAILABLE
        except Exception as exc:
            self._events.error("password-read-error", None,
                               f"reading the password of {prepared.instance_id} failed", exc)
            return SERVER_ERROR
        return Reply(200, password.encode()) if password else _NO_PASSWORD

    def _post_password(self, prepared: Prepared | None, path: bytes, body: bytes) -> Reply:
        version, file = _openstack_parts(path)
        if version is None or file != openstack.PASSWORD_FILE:
            return METHOD_NOT_ALLOWED
        if prepared is None:
            return NOT_FOUND
        if not prepared.takes_password:
            return FORBIDDEN
        if len(body) > MAX_PASSWORD_BYTES:
            return BAD_REQUEST
        try:
            self.store.set_password_once(prepared.instance_id, body.decode("utf-8"))
        except UnicodeDecodeError:
            return BAD_REQUEST
        except PasswordAlreadySet:
            return CONFLICT
        except StoreUnavailable:
            return STORE_UNAVAILABLE
        except Exception as exc:
            self._events.error("password-write-error", None,
                               f"storing the password of {prepared.instance_id} failed", exc)
            return SERVER_ERROR
        return _PASSWORD_OK


def _is_password(path: bytes | None) -> bool:
    if path is None or not path.startswith(OPENSTACK_PREFIX):
        return False
    version, file = _openstack_parts(path)
    return version is not None and file == openstack.PASSWORD_FILE


def _openstack_parts(path: bytes) -> tuple[bytes | None, bytes | None]:
    """(version, file) for canonical /openstack/<version>/<file>; (None, b"") for the root."""
    rest = path[len(OPENSTACK_PREFIX):]
    if rest == b"":
        return None, b""
    if rest[:1] != b"/":
        return None, None
    version, _, file = rest[1:].partition(b"/")
    if version not in openstack.VERSION_SET:
        return None, None
    return version, file
