"""`run --api`: 'none', a path, or the default named by --name; a default already served
by a same-named daemon in another namespace leaves this one without an API (no root)."""

from __future__ import annotations

from transparent_md import names as names_module
from transparent_md.api.server import AdminServer
from transparent_md.cli.run import api_socket_choice
from transparent_md.daemon.daemon import usable_api_socket
from transparent_md.names import DaemonNames
from transparent_md.store import open_store


def test_api_option_values(tmp_path, monkeypatch):
    monkeypatch.setattr(names_module, "STATE_ROOT", tmp_path)
    names = DaemonNames("tmd", 4026531840)
    assert names.api_socket == tmp_path / "tmd.sock"
    assert api_socket_choice("none", names) == (None, False)
    assert api_socket_choice("/srv/md.sock", names) == ("/srv/md.sock", False)
    assert api_socket_choice(None, names) == (str(tmp_path / "tmd.sock"), True)


def test_a_default_socket_served_elsewhere_leaves_this_daemon_without_an_api(tmp_path):
    path = str(tmp_path / "tmd.sock")
    assert usable_api_socket(path, is_default=True) == path
    other = AdminServer(path, lambda: open_store(str(tmp_path / "db")))
    other.start()
    try:
        assert usable_api_socket(path, is_default=True) is None  # warned, no API
        assert usable_api_socket(path, is_default=False) == path  # --api PATH: bind fails
    finally:
        other.stop()
    assert usable_api_socket(path, is_default=True) == path
    assert usable_api_socket(None, is_default=False) is None
