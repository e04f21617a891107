"""The libvirt hook driven exactly as libvirtd drives it: `qemu DOMAIN OPERATION SUBOP
EXTRA`, the domain XML (files under tests/libvirt/domains) on stdin. Checks the records
and port bindings that result, the stop choices, and that a failure is one line on
stderr, a non-zero exit and an unchanged store. Tests of bindings run the hook in a
namespace holding the taps the XMLs name (a binding names an existing link: root). The
wrapper's tests run the one that `scripts/install` put in a temporary prefix (as root),
under libvirtd's bare environment; the others need no root."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installed import Install, run_as_libvirtd
from transparent_md.store import open_store

DOMAINS = Path(__file__).parent / "domains"


# The taps the domain XMLs name, made (as veth pairs) in the `taps` namespace.
TAPS = ("vnet0", "vnet3", "vnet4")


def hook(store: str, domain: str, operation: str, xml: str, *extra: str,
         subop: str = "begin", api: str | None = None,
         ns: str | None = None) -> subprocess.CompletedProcess:
    """As libvirtd: argv DOMAIN OPERATION SUBOP EXTRA, the XML on stdin (in `ns`); `api`:
    through the admin API at that socket instead of the store file."""
    target = ["--api", api] if api else ["--store", store]
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "transparent_md", "libvirt-hook", *target, *extra,
         domain, operation, subop, "-"],
        input=(DOMAINS / xml).read_bytes(), capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def taps(topology):
    """A namespace holding links named as the XMLs' taps (vnet0, vnet3, vnet4)."""
    ns = topology.add_ns("taps")
    for name in TAPS:
        topology.ip(ns, f"link add {name} type veth peer name {name}-p")
    return ns


def ifindex(ns: str, name: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", ns, "cat",
                               f"/sys/class/net/{name}/ifindex"],
                              capture_output=True, text=True, check=True).stdout)


def records(store: str) -> dict:
    db = open_store(store)
    try:
        return {e.instance.instance_id: e for e in db.entries()}
    finally:
        db.close()


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "instances.db")


@pytest.mark.netns
def test_a_bridge_interface_becomes_a_record_bound_to_its_tap(store, taps):
    prepared = hook(store, "web-1", "prepare", "web-1.xml", ns=taps)
    assert prepared.returncode == 0 and prepared.stdout == b"", prepared.stderr
    assert records(store)["web-1"].instance.parked  # before this start's tap: nobody
    for operation in ("start", "started"):
        result = hook(store, "web-1", operation, "web-1.xml", ns=taps)
        assert result.returncode == 0 and result.stdout == b"", result.stderr
    record = records(store)["web-1"].instance
    assert (record.mac, record.bridge, record.port) == ("52:54:00:a1:00:01", "br0", "vnet0")
    assert record.port_ifindex == ifindex(taps, "vnet0") and not record.parked
    assert record.openstack_uuid == "6c0f2a4e-9d3b-4a55-8e0a-6f1d2c3b4a51"
    assert record.hostname == "web-1"
    assert record.availability_zone == "eu-west-1b"  # from the YAML metadata
    assert record.user_data == b"#cloud-config\nhostname: web-1\n"
    assert dict(record.ssh_keys)["ops"].startswith("ssh-ed25519 ")


@pytest.mark.netns
def test_two_network_nics_with_json_metadata_and_a_network_mapping(store, taps):
    result = hook(store, "db-1", "started", "db-1-two-nics.xml",
                  "--network", "storage=br-stor", ns=taps)
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


@pytest.mark.netns
def test_stop_parks_and_keeps_what_an_orchestrator_added(store, taps):
    assert hook(store, "web-1", "started", "web-1.xml", ns=taps).returncode == 0
    db = open_store(store)
    db.modify("web-1", lambda r: __import__("dataclasses").replace(r, public_ipv4="192.0.2.7"))
    db.close()
    for operation in ("stopped", "release"):
        result = hook(store, "web-1", operation, "web-1.xml", subop="end", ns=taps)
        assert result.returncode == 0, result.stderr
    record = records(store)["web-1"].instance
    assert record.parked and record.mac == "52:54:00:a1:00:01"
    assert record.public_ipv4 == "192.0.2.7"
    # The tap is deleted and libvirt makes vnet0 again for the next start: another link.
    old_link = ifindex(taps, "vnet0")
    subprocess.run(["ip", "netns", "exec", taps, "ip", "link", "del", "vnet0"], check=True)
    subprocess.run(["ip", "netns", "exec", taps, "ip", "link", "add", "vnet0", "type", "veth",
                    "peer", "name", "vnet0-p"], check=True)
    assert ifindex(taps, "vnet0") > old_link  # ifindexes are not reused
    assert hook(store, "web-1", "started", "web-1.xml", ns=taps).returncode == 0
    record = records(store)["web-1"].instance
    assert record.port == "vnet0" and record.public_ipv4 == "192.0.2.7"
    assert record.port_ifindex == ifindex(taps, "vnet0") and not record.parked


def test_a_start_that_names_no_existing_tap_parks_and_says_so(store, tmp_path):
    """Here (no taps in this namespace) `started` finds no vnet0; an XML without
    <target dev> names none: both park the record, with a line on stderr, exit 0."""
    result = hook(store, "web-1", "started", "web-1.xml")
    assert result.returncode == 0, result.stderr
    assert (b"interface 0 (52:54:00:a1:00:01): its tap vnet0 does not exist: record web-1 "
            b"parked (served to nobody)") in result.stderr
    assert records(store)["web-1"].instance.parked
    no_target = tmp_path / "no-target.xml"
    no_target.write_bytes((DOMAINS / "web-1.xml").read_bytes().replace(
        b"<target dev='vnet0'/>", b""))
    result = subprocess.run(
        [sys.executable, "-m", "transparent_md", "libvirt-hook", "--store", store, "web-1",
         "started", "begin", "-"], input=no_target.read_bytes(), capture_output=True,
        timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"names no <target dev> for it: record web-1 parked" in result.stderr
    record = records(store)["web-1"].instance
    assert record.parked and record.user_data  # kept, with its IAM and user-data


def test_metadata_cannot_bind_or_unpark(store, tmp_path):
    xml = (DOMAINS / "web-1.xml").read_bytes().replace(
        b"availability_zone:", b"parked: false\nport_ifindex: 1\nport: lo\n"
                               b"availability_zone:", 1)
    result = subprocess.run(
        [sys.executable, "-m", "transparent_md", "libvirt-hook", "--store", store, "web-1",
         "prepare", "begin", "-"], input=xml, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    record = records(store)["web-1"].instance
    assert record.parked and record.port is None and record.port_ifindex is None


def test_stop_can_remove_the_records(store):
    hook(store, "db-1", "prepare", "db-1-two-nics.xml", "--network", "storage=br1")
    assert set(records(store)) == {"i-0db1", "i-0db1-nic1"}
    result = hook(store, "db-1", "stopped", "db-1-two-nics.xml", "--network", "storage=br1",
                  "--on-stop", "remove", subop="end")
    assert result.returncode == 0, result.stderr
    assert records(store) == {}


@pytest.mark.parametrize("xml, message", [
    ("malformed.xml", b"domain XML is not well-formed: mismatched tag"),
    ("bad-metadata.xml", b"record bad-meta, field 'launch_index': must be a whole number"),
])
def test_a_failure_is_one_line_a_non_zero_exit_and_no_change(store, xml, message):
    assert hook(store, "web-1", "prepare", "web-1.xml").returncode == 0
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
    # Read whole: its metadata reached the record (parked: no tap vnet0 exists here).
    assert record.parked and record.user_data.startswith(b"#cloud-config")


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


def _wrapped(install: Install, operation: str, subop: str,
             ns: str | None = None) -> subprocess.CompletedProcess:
    """The installed wrapper as libvirtd runs it: its argv, the XML, its bare environment
    (in `ns`: where the taps are)."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return run_as_libvirtd([*prefix, str(install.libvirt_hook), "web-1", operation, subop,
                            "-"], (DOMAINS / "web-1.xml").read_bytes(), timeout=30)


# An admin API served from the `taps` namespace, as the daemon serves it from its own.
API_SERVER = """
import sys
from transparent_md.api.server import AdminServer
from transparent_md.store import open_store
server = AdminServer(sys.argv[1], lambda: open_store(sys.argv[2]))
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.mark.netns
def test_the_installed_wrapper_through_the_admin_api(installed_prefix, store, tmp_path, taps):
    """The daemon's API and the wrapper both in the namespace of the taps, as on a host."""
    api = str(tmp_path / "api.sock")
    server = subprocess.Popen(["ip", "netns", "exec", taps, sys.executable, "-c", API_SERVER,
                               api, store], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        with _conf(installed_prefix, TMD_API=api, TMD_BRIDGES="br0"):
            started = time.monotonic()
            result = _wrapped(installed_prefix, "started", "begin", ns=taps)
            elapsed_ms = (time.monotonic() - started) * 1000
            assert result.returncode == 0, result.stderr
            record = records(store)["web-1"].instance
            assert (record.port, record.port_ifindex) == ("vnet0", ifindex(taps, "vnet0"))
            stopped = _wrapped(installed_prefix, "stopped", "end", ns=taps)
            assert stopped.returncode == 0, stopped.stderr
            assert records(store)["web-1"].instance.parked
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"hook through the installed wrapper and the API: {elapsed_ms:.0f} ms")


def test_with_the_daemon_down_the_wrapper_refuses_by_default(installed_prefix, store,
                                                             tmp_path):
    with _conf(installed_prefix, TMD_API=str(tmp_path / "nobody.sock")):
        result = _wrapped(installed_prefix, "start", "begin")
    assert result.returncode == 1 and result.stderr.count(b"\n") == 1, result.stderr
    assert b"cannot reach the admin API" in result.stderr
    assert b"--if-daemon-down store|allow" in result.stderr
    assert not Path(store).exists()


@pytest.mark.netns
def test_with_the_daemon_down_the_wrapper_can_write_the_store(installed_prefix, store,
                                                              tmp_path, taps):
    open_store(store).close()  # the daemon's store exists already
    with _conf(installed_prefix, TMD_API=str(tmp_path / "nobody.sock"),
               TMD_IF_DAEMON_DOWN="store", TMD_FALLBACK_STORE=store):
        result = _wrapped(installed_prefix, "started", "begin", ns=taps)
    assert result.returncode == 0, result.stderr
    assert b"WARNING" in result.stderr and store.encode() in result.stderr
    record = records(store)["web-1"].instance
    assert (record.port, record.port_ifindex) == ("vnet0", ifindex(taps, "vnet0"))


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
