"""The libvirt hook driven exactly as libvirtd drives it: `qemu DOMAIN OPERATION SUBOP
EXTRA`, the domain XML (files under tests/libvirt/domains) on stdin. Checks the records
and port bindings that result, the stop choices, and that a failure is one line on
stderr, a non-zero exit and an unchanged store. The wrapper's tests run the one that
`scripts/install` put in a temporary prefix (as root), under libvirtd's bare environment;
the others need no root."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installed import Install, run_as_libvirtd
from transparent_md.api.server import AdminServer
from transparent_md.store import open_store

DOMAINS = Path(__file__).parent / "domains"


def hook(store: str, domain: str, operation: str, xml: str, *extra: str,
         subop: str = "begin", api: str | None = None) -> subprocess.CompletedProcess:
    """As libvirtd: argv DOMAIN OPERATION SUBOP EXTRA, the XML on stdin; `api`: through
    the admin API at that socket instead of the store file."""
    target = ["--api", api] if api else ["--store", store]
    return subprocess.run(
        [sys.executable, "-m", "transparent_md", "libvirt-hook", *target, *extra,
         domain, operation, subop, "-"],
        input=(DOMAINS / xml).read_bytes(), capture_output=True, timeout=30)


def records(store: str) -> dict:
    db = open_store(store)
    try:
        return {e.instance.instance_id: e for e in db.entries()}
    finally:
        db.close()


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "instances.db")


def test_a_bridge_interface_becomes_a_record_bound_to_its_tap(store):
    for operation in ("prepare", "start", "started"):
        result = hook(store, "web-1", operation, "web-1.xml")
        assert result.returncode == 0 and result.stdout == b"", result.stderr
    record = records(store)["web-1"].instance
    assert (record.mac, record.bridge, record.port) == ("52:54:00:a1:00:01", "br0", "vnet0")
    assert record.openstack_uuid == "6c0f2a4e-9d3b-4a55-8e0a-6f1d2c3b4a51"
    assert record.hostname == "web-1"
    assert record.availability_zone == "eu-west-1b"  # from the YAML metadata
    assert record.user_data == b"#cloud-config\nhostname: web-1\n"
    assert dict(record.ssh_keys)["ops"].startswith("ssh-ed25519 ")


def test_two_network_nics_with_json_metadata_and_a_network_mapping(store):
    result = hook(store, "db-1", "started", "db-1-two-nics.xml",
                  "--network", "storage=br-stor")
    assert result.returncode == 0, result.stderr
    assert b"type 'user' is not on a bridge" in result.stderr  # said, not fatal
    found = records(store)
    assert set(found) == {"i-0db1", "i-0db1-nic1"}
    first, second = found["i-0db1"].instance, found["i-0db1-nic1"].instance
    # type='network': the bridge from the live XML, or from --network for the second.
    assert (first.mac, first.bridge, first.port) == ("52:54:00:db:00:01", "br0", "vnet3")
    assert (second.mac, second.bridge, second.port) == ("52:54:00:db:00:02", "br-stor",
                                                        "vnet4")
    assert first.instance_type == "m5.large" == second.instance_type
    assert dict(first.openstack_meta) == {"role": "database"}
    assert first.hostname == "db-1"


def test_unmapped_network_and_unserved_bridges_are_skipped(store):
    result = hook(store, "db-1", "started", "db-1-two-nics.xml", "--bridge", "br0")
    assert result.returncode == 0, result.stderr
    assert b"network 'storage' names no bridge; map it with --network storage=BRIDGE" \
        in result.stderr
    assert set(records(store)) == {"i-0db1"}
    other = hook(store, "web-1", "started", "web-1.xml", "--bridge", "br-other*")
    assert other.returncode == 0 and "web-1" not in records(store)


def test_stop_drops_the_binding_and_keeps_what_an_orchestrator_added(store):
    hook(store, "web-1", "started", "web-1.xml")
    db = open_store(store)
    db.modify("web-1", lambda r: __import__("dataclasses").replace(r, public_ipv4="192.0.2.7"))
    db.close()
    for operation in ("stopped", "release"):
        result = hook(store, "web-1", operation, "web-1.xml", subop="end")
        assert result.returncode == 0, result.stderr
    record = records(store)["web-1"].instance
    assert record.port is None and record.mac == "52:54:00:a1:00:01"
    assert record.public_ipv4 == "192.0.2.7"
    # the next start binds it again (libvirt may hand out another vnetN) and keeps it
    assert hook(store, "web-1", "started", "web-1.xml").returncode == 0
    record = records(store)["web-1"].instance
    assert record.port == "vnet0" and record.public_ipv4 == "192.0.2.7"


def test_stop_can_remove_the_records(store):
    hook(store, "db-1", "started", "db-1-two-nics.xml", "--network", "storage=br1")
    result = hook(store, "db-1", "stopped", "db-1-two-nics.xml", "--network", "storage=br1",
                  "--on-stop", "remove", subop="end")
    assert result.returncode == 0, result.stderr
    assert records(store) == {}


@pytest.mark.parametrize("xml, message", [
    ("malformed.xml", b"domain XML is not well-formed: mismatched tag"),
    ("bad-metadata.xml", b"record bad-meta, field 'launch_index': must be a whole number"),
])
def test_a_failure_is_one_line_a_non_zero_exit_and_no_change(store, xml, message):
    assert hook(store, "web-1", "started", "web-1.xml").returncode == 0
    before = {k: e.revision for k, e in records(store).items()}
    domain = "broken" if xml == "malformed.xml" else "bad-meta"
    result = hook(store, domain, "start", xml)
    assert result.returncode == 1
    assert result.stderr.count(b"\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == b""
    assert {k: e.revision for k, e in records(store).items()} == before


ENTITY_XML = """<?xml version="1.0" encoding="UTF-16"?>
<!DOCTYPE domain [<!ENTITY secret "user_data: stolen">]>
<domain type='kvm'>
  <name>evil</name>
  <metadata><tmd:instance xmlns:tmd="urn:transparent-md:metadata:1">&secret;</tmd:instance>
  </metadata>
  <devices><interface type='bridge'><mac address='52:54:00:a1:00:09'/>
    <source bridge='br0'/><target dev='vnet9'/></interface></devices>
</domain>
"""


DTD_REFUSED = b"domain XML with a DOCTYPE or entity declarations is refused"


@pytest.mark.parametrize("encoding, refusal", [
    ("utf-16", DTD_REFUSED), ("utf-16-le", DTD_REFUSED), ("utf-16-be", DTD_REFUSED),
    ("utf-8", DTD_REFUSED), ("utf-32", b"domain XML is not well-formed"),  # expat has none
])
def test_a_doctype_with_entities_is_refused_in_every_encoding(store, encoding, refusal):
    declared = "UTF-16" if encoding.startswith("utf-16") else encoding.upper()
    text = ENTITY_XML.replace("UTF-16", declared)
    bom = "" if encoding in ("utf-16", "utf-32", "utf-8") else "\ufeff"
    data = (bom + text).encode(encoding)
    assert (b"<!DOCTYPE" in data) == (encoding == "utf-8")  # a byte search is blind here
    result = subprocess.run(
        [sys.executable, "-m", "transparent_md", "libvirt-hook", "--store", store,
         "evil", "start", "begin", "-"], input=data, capture_output=True, timeout=30)
    assert result.returncode == 1, result
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
    assert refusal in result.stderr, result.stderr
    assert records(store) == {}


def test_a_utf16_domain_xml_without_a_doctype_is_read(store):
    data = (DOMAINS / "web-1.xml").read_text().encode("utf-16")
    result = subprocess.run(
        [sys.executable, "-m", "transparent_md", "libvirt-hook", "--store", store,
         "web-1", "started", "begin", "-"], input=data, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    record = records(store)["web-1"].instance
    assert record.port == "vnet0" and record.user_data.startswith(b"#cloud-config")


def test_operations_it_does_not_handle_exit_at_once(store):
    for operation in ("migrate", "restore", "attach"):
        result = hook(store, "web-1", operation, "web-1.xml")
        assert (result.returncode, result.stdout) == (0, b"")  # no stdout: XML untouched
    assert records(store) == {}


@contextlib.contextmanager
def _conf(install: Install, **settings: str) -> Iterator[None]:
    """The wrapper's settings file as an operator writes it; the installed one after."""
    shipped = install.hook_conf().read_text()
    install.hook_conf().write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    try:
        yield
    finally:
        install.hook_conf().write_text(shipped)


def _wrapped(install: Install, operation: str, subop: str) -> subprocess.CompletedProcess:
    """The installed wrapper as libvirtd runs it: its argv, the XML, its bare environment."""
    return run_as_libvirtd([str(install.libvirt_hook), "web-1", operation, subop, "-"],
                           (DOMAINS / "web-1.xml").read_bytes(), timeout=30)


def test_the_installed_wrapper_through_the_admin_api(installed_prefix, store, tmp_path):
    server = AdminServer(str(tmp_path / "api.sock"), lambda: open_store(store))
    server.start()
    try:
        with _conf(installed_prefix, TMD_API=server.path, TMD_BRIDGES="br0"):
            started = time.monotonic()
            result = _wrapped(installed_prefix, "started", "begin")
            elapsed_ms = (time.monotonic() - started) * 1000
            assert result.returncode == 0, result.stderr
            assert records(store)["web-1"].instance.port == "vnet0"
            stopped = _wrapped(installed_prefix, "stopped", "end")
            assert stopped.returncode == 0, stopped.stderr
            assert records(store)["web-1"].instance.port is None
    finally:
        server.stop()
    print(f"hook through the installed wrapper and the API: {elapsed_ms:.0f} ms")


def test_with_the_daemon_down_the_wrapper_refuses_by_default(installed_prefix, store,
                                                             tmp_path):
    with _conf(installed_prefix, TMD_API=str(tmp_path / "nobody.sock")):
        result = _wrapped(installed_prefix, "start", "begin")
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1, result.stderr
    assert b"cannot reach the admin API" in result.stderr
    assert b"--if-daemon-down store|allow" in result.stderr
    assert not Path(store).exists()


def test_with_the_daemon_down_the_wrapper_can_write_the_store(installed_prefix, store,
                                                              tmp_path):
    open_store(store).close()  # the daemon's store exists already
    with _conf(installed_prefix, TMD_API=str(tmp_path / "nobody.sock"),
               TMD_IF_DAEMON_DOWN="store", TMD_FALLBACK_STORE=store):
        result = _wrapped(installed_prefix, "started", "begin")
    assert result.returncode == 0, result.stderr
    assert b"WARNING" in result.stderr and store.encode() in result.stderr
    assert records(store)["web-1"].instance.port == "vnet0"


def test_with_the_daemon_down_allow_starts_the_vm_unbound_and_says_so(store, tmp_path):
    result = hook(store, "web-1", "start", "web-1.xml", "--if-daemon-down", "allow",
                  api=str(tmp_path / "nobody.sock"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(b"\n") == 1
    assert b"WARNING" in result.stderr and b"the VM starts without its record bound" \
        in result.stderr
    assert not Path(store).exists()


def test_the_fallback_store_must_exist(store, tmp_path):
    result = hook(store, "web-1", "start", "web-1.xml", "--if-daemon-down", "store",
                  "--fallback-store", store, api=str(tmp_path / "nobody.sock"))
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1, result.stderr
    assert f"--fallback-store {store} does not exist".encode() in result.stderr
    assert not Path(store).exists()
