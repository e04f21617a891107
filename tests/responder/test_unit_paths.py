"""paths.canonical_path alone: request target in, canonical path (or None) out."""

from __future__ import annotations

import pytest

from transparent_md.responder.paths import canonical_path


@pytest.mark.parametrize(("target", "path"), [
    (b"/", b"/"),
    (b"/latest", b"/latest"),
    (b"/latest/", b"/latest"),
    (b"//", b"/"),
    (b"///latest////meta-data///", b"/latest/meta-data"),
    (b"//latest/meta-data/instance-id", b"/latest/meta-data/instance-id"),
    (b"/latest//meta-data/reservation-id", b"/latest/meta-data/reservation-id"),
    (b"/latest/meta-data/?x=1", b"/latest/meta-data"),
    (b"/latest/meta-data/instance-id?", b"/latest/meta-data/instance-id"),
    (b"/latest/user-data#frag", b"/latest/user-data"),
    (b"/latest?a=/b//c", b"/latest"),
    (b"/a/./b/../c", b"/a/c"),
    (b"/../../latest", b"/latest"),
    (b"/latest/..", b"/"),
    (b"/.hidden/..x", b"/.hidden/..x"),  # dots inside a name are just characters
    (b"/latest/meta-data/%2e%2e", b"/latest/meta-data/%2e%2e"),  # escapes stay as sent
    # The absolute form (RFC 9112 section 3.2.2); scheme case-insensitive, any host/port.
    (b"http://169.254.169.254/latest/meta-data/", b"/latest/meta-data"),
    (b"HTTP://169.254.169.254:80//latest", b"/latest"),
    (b"https://instance-data/latest/", b"/latest"),
    (b"http://169.254.169.254", b"/"),
    (b"http://169.254.169.254?x", b"/"),
    (b"http://169.254.169.254/", b"/"),
])
def test_canonical_path(target, path):
    assert canonical_path(target) == path


@pytest.mark.parametrize("target", [b"", b"*", b"169.254.169.254:80", b"latest/meta-data",
                                    b"ftp://host/latest", b"http:/latest", b"?x=/latest"])
def test_targets_that_name_no_path(target):
    assert canonical_path(target) is None


def test_canonical_paths_are_fixed_points():
    for target in (b"//a//b/", b"/a/./b/../c/", b"http://h//x//", b"/"):
        path = canonical_path(target)
        assert canonical_path(path) == path
