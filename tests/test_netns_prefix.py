"""Namespace names start with a chosen base, then a random part, so runs never collide.

Only names are checked here: constructing a Topology creates nothing.
"""

from __future__ import annotations

import pytest

from transparent_md.lab.netns import (
    DEFAULT_NETNS_PREFIX,
    NETNS_PREFIX_ENV,
    Topology,
    netns_prefix,
)


def test_default_then_environment_then_explicit(monkeypatch):
    monkeypatch.delenv(NETNS_PREFIX_ENV, raising=False)
    assert netns_prefix() == DEFAULT_NETNS_PREFIX
    monkeypatch.setenv(NETNS_PREFIX_ENV, "alice")
    assert netns_prefix() == "alice"
    assert netns_prefix("ci-42") == "ci-42"


def test_topology_keeps_a_random_part_after_the_base(monkeypatch):
    monkeypatch.setenv(NETNS_PREFIX_ENV, "bob")
    first, second = Topology(), Topology()
    assert first.prefix.startswith("bob") and second.prefix.startswith("bob")
    assert first.prefix != second.prefix
    assert Topology("carol").ns_name("hv").startswith("carol")
    assert Topology("carol").ns_name("hv").endswith("-hv")


@pytest.mark.parametrize("bad", ["1abc", "a b", "../etc", "x" * 33, "tmd;rm", "-x"])
def test_unsafe_bases_are_refused(monkeypatch, bad):
    monkeypatch.delenv(NETNS_PREFIX_ENV, raising=False)
    with pytest.raises(ValueError, match="namespace prefix"):
        netns_prefix(bad)
    monkeypatch.setenv(NETNS_PREFIX_ENV, bad)
    with pytest.raises(ValueError, match="namespace prefix"):
        Topology()
