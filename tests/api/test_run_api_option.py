"""`run --api`: 'none', a path, or the default named by --name; a default already served
by a same-named daemon in another namespace leaves this one without an API (no root)."""

from __future__ import annotations

from transparent_md import names as names_module
from transparent_md.api.server import AdminServer
from transparent_md.cli.run import _api_socket
from transparent_md.names import DaemonNames
from transparent_md.store import open_store


def test_api_option_values(tmp_path, monkeypatch):
    monkeypatch.setattr(names_module, "STATE_ROOT", tmp_path)
    names = DaemonNames("tmd", 4026531840)
    assert names.api_socket == tmp_path / "tmd.sock"
    assert _api_socket("none", names) is None
    assert _api_socket("/srv/md.sock", names) == "/srv/md.sock"
    assert _api_socket(None, names) == str(tmp_path / "tmd.sock")
    other = AdminServer(str(names.api_socket), lambda: open_store(str(tmp_path / "db")))
    other.start()
    try:
        assert _api_socket(None, names) is None  # served by another daemon: warned, none
    finally:
        other.stop()
    assert _api_socket(None, names) == str(tmp_path / "tmd.sock")
