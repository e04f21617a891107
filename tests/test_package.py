"""The .deb an operator installs (issue 21, acceptance 1): `scripts/package` builds it,
`dpkg -i` installs it into this machine's root (tests/installed.py says when that is
allowed and how it is undone), and then, from the installed files only:

- the libvirt hook wrapper, under libvirtd's bare environment, binds a record through the
  installed daemon's admin API, and the guest on that tap is served;
- `systemd-analyze verify` and `security --offline=true` pass on the installed unit;
- the installed CLI serves and lists records from a real etcd;
- a newer revision installed over a running daemon keeps its records and a token it
  issued; `dpkg -r` keeps the store.

The tests share one install and one daemon and run in file order; the last removes the
package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.daemon.test_service_unit import MAX_EXPOSURE
from tests.installed import (
    INSTALLED_ONLY,
    PACKAGE,
    PACKAGE_LAYOUT,
    dpkg,
    installed_version,
    newer_revision,
    run_as_libvirtd,
    systemd_analyze,
)
from tests.libvirt.test_libvirt_guest import WEB1_NIC
from transparent_md.cli.lab_extra import GET_THE_LAB
from transparent_md.lab.etcd import FLEET_ETCD_IPS, EtcdCluster, fleet_network
from transparent_md.lab.hypervisor import METADATA_URL, Hypervisor
from transparent_md.store import DEFAULT_STORE_PATH, open_store

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DOMAIN_XML = (Path(__file__).parent / "libvirt" / "domains" / "web-1.xml").read_bytes()
TOKEN_TTL_S = "21600"
INSTANCE_ID = "/latest/meta-data/instance-id"
HOSTNAME = "/latest/meta-data/hostname"
GUEST_ROUTES = ["169.254.169.254/32 dev eth0"]


@pytest.fixture(scope="module")
def served(installed_package, topology, tmp_path_factory):
    """The installed daemon on br0, with the package's default store, an admin API on a
    socket of the test's own; web-1's tap `vnet0` with its MAC, not yet bound."""
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("web1", bridge="br0", port=WEB1_NIC.port, addr="10.0.0.21/24",
                     mac=WEB1_NIC.mac, routes=GUEST_ROUTES)
    api = str(tmp_path_factory.mktemp("api") / "api.sock")
    hv.daemon = start_installed_daemon(hv, api)
    yield hv, guest, api
    hv.daemon.stop()


def start_installed_daemon(hv: Hypervisor, api: str):
    return hv.start_daemon(["br0"], DEFAULT_STORE_PATH, ["--api", api],
                           python=str(PACKAGE_LAYOUT.python), env=INSTALLED_ONLY)


def token(hv: Hypervisor, guest) -> str:
    res = hv.topo.sh(guest.ns, ["curl", "-sS", "-m", "5", "-X", "PUT", "-H",
                                f"X-aws-ec2-metadata-token-ttl-seconds: {TOKEN_TTL_S}",
                                f"{METADATA_URL}/latest/api/token"])
    assert res.returncode == 0 and res.stdout, res.stderr
    return res.stdout


def with_token(hv: Hypervisor, guest, value: str, path: str) -> tuple[int, str]:
    return hv.curl(guest.ns, path, extra=["-H", f"X-aws-ec2-metadata-token: {value}"])


def test_the_package_is_lintian_clean(installed_package):
    res = subprocess.run(["lintian", "--tag-display-limit", "0", str(installed_package.deb)],
                         capture_output=True, text=True, timeout=600)
    tags = [line for line in res.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == [], res.stdout


def test_the_files_are_where_the_package_says(installed_package):
    layout = installed_package.install
    assert layout.cli.resolve() == layout.python.parent / PACKAGE
    for path in (layout.unit, layout.libvirt_hook, layout.proxmox_hook,
                 layout.conf_dir / "run.yaml", layout.hook_conf(),
                 layout.doc_dir / "copyright", layout.doc_dir / "README.md",
                 layout.doc_dir / "docs" / "operations.md",
                 Path("/usr/share/bash-completion/completions") / PACKAGE):
        assert path.is_file(), path
    conffiles = subprocess.run(["dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE],
                               capture_output=True, text=True).stdout
    assert "/etc/transparent-md/run.yaml" in conffiles
    assert "/etc/transparent-md/libvirt-hook.conf" in conffiles
    man = subprocess.run(["man", "-w", "8", PACKAGE], capture_output=True, text=True)
    assert man.stdout.strip().endswith("transparent-md.8.gz"), man.stderr
    # Disabled until the operator enables it; libvirt's own hook is never written.
    assert not list(Path("/etc/systemd/system").glob(f"*.wants/{PACKAGE}.service"))
    assert not Path("/etc/libvirt/hooks/qemu").exists() or \
        PACKAGE not in subprocess.run(["dpkg", "-S", "/etc/libvirt/hooks/qemu"],
                                      capture_output=True, text=True).stdout
    assert Path("/var/lib/transparent-md").stat().st_mode & 0o777 == 0o700
    bench = subprocess.run([str(layout.cli), "bench"], capture_output=True, text=True,
                           timeout=60)
    assert bench.stderr == f"transparent-md: error: {GET_THE_LAB.format(command='bench')}\n"


def test_bpf_is_recommended_not_required(installed_package):
    """A host without bcc or kernel headers installs the package and runs raw."""
    fields = {name: subprocess.run(["dpkg-deb", "-f", str(installed_package.deb), name],
                                   capture_output=True, text=True, check=True).stdout
              for name in ("Depends", "Recommends")}
    assert "bpfcc" not in fields["Depends"] and "headers" not in fields["Depends"]
    assert "python3-nftables" in fields["Depends"]
    assert "python3-bpfcc" in fields["Recommends"] and "linux-headers" in fields["Recommends"]


def test_the_installed_unit_passes_systemd_analyze(installed_package):
    verify, exposure = systemd_analyze(str(installed_package.install.unit), man=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert exposure is not None and exposure <= MAX_EXPOSURE


def test_the_hook_wrapper_binds_under_libvirtds_environment(installed_package, served):
    hv, guest, api = served
    conf = installed_package.install.hook_conf()
    shipped = conf.read_text()
    conf.write_text(shipped + f"TMD_API={api}\nTMD_BRIDGES=br0\n")
    try:
        for operation in ("prepare", "start", "started"):
            # in the hypervisor's namespace, where libvirtd and its taps live
            result = run_as_libvirtd(["ip", "netns", "exec", hv.ns,
                                      str(installed_package.install.libvirt_hook), "web-1",
                                      operation, "begin", "-"], DOMAIN_XML)
            assert result.returncode == 0 and result.stdout == b"", result.stderr
    finally:
        conf.write_text(shipped)
    assert hv.curl(guest.ns, HOSTNAME) == (200, "web-1")


def test_the_installed_cli_serves_from_etcd(installed_package, topology, tmp_path):
    etcd_ns = topology.add_ns("etcd")
    hv = Hypervisor(topology, "hv-etcd")
    fleet_network(topology, etcd_ns, [hv.ns], FLEET_ETCD_IPS[:1])
    etcd = EtcdCluster(topology, etcd_ns, FLEET_ETCD_IPS[:1], tmp_path / "etcd").start()
    daemon = None
    try:
        hv.bridge("br0")
        guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                         routes=GUEST_ROUTES)
        url = etcd.url("/pkg")
        cli = str(installed_package.install.cli)
        added = topology.sh(hv.ns, [cli, "instance", "add", "i-etcd", "--mac", guest.mac,
                                    "--store", url])
        assert added.returncode == 0, added.stderr
        listed = topology.sh(hv.ns, [cli, "instance", "list", "--store", url])
        assert listed.returncode == 0 and "i-etcd" in listed.stdout, listed.stderr
        daemon = hv.start_daemon(["br0"], url, ["--cache", str(tmp_path / "cache.db")],
                                 python=str(PACKAGE_LAYOUT.python), env=INSTALLED_ONLY)
        assert hv.curl(guest.ns, INSTANCE_ID) == (200, "i-etcd")
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        etcd.stop()


def test_an_upgrade_over_the_running_daemon_keeps_records_and_tokens(installed_package,
                                                                     served):
    hv, guest, api = served
    issued = token(hv, guest)
    assert with_token(hv, guest, issued, HOSTNAME) == (200, "web-1")
    newer, version = newer_revision(installed_package.deb, installed_package.work)
    res = dpkg("-i", str(newer))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert installed_version() == version
    # dpkg replaced the files under it: the running daemon still serves...
    assert hv.daemon.proc.poll() is None
    assert with_token(hv, guest, issued, HOSTNAME) == (200, "web-1")
    # ...and so does the new one, as systemd's try-restart in postinst would start it.
    assert hv.daemon.stop() == 0
    hv.daemon = start_installed_daemon(hv, api)
    assert with_token(hv, guest, issued, HOSTNAME) == (200, "web-1")
    assert with_token(hv, guest, issued, INSTANCE_ID) == (200, "web-1")


def test_remove_keeps_the_store(installed_package, served):
    hv, _, _ = served
    hv.daemon.stop()  # as prerm stops the unit
    res = dpkg("-r", PACKAGE)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert installed_version() is None
    assert not PACKAGE_LAYOUT.cli.exists() and not PACKAGE_LAYOUT.python.exists()
    assert (PACKAGE_LAYOUT.conf_dir / "run.yaml").is_file()  # conffiles stay until purge
    store = open_store(DEFAULT_STORE_PATH)
    try:
        assert "web-1" in {e.instance.instance_id for e in store.entries()}
    finally:
        store.close()
