"""What every VM test module does the same way: find or build the image, write a VM's
record and bind it to its hot-plugged tap through the admin API, boot several VMs at once,
and check what cloud-init printed against the record.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.libvirt import tiny_vm
from tests.vm import cloud_vm
from tests.vm.cloud_lab import Vm, hot_plug_tap
from transparent_md.api.client import ApiClient
from transparent_md.lab import vm_image
from transparent_md.lab.hypervisor import Hypervisor

# A boot under TCG on a shared 2-core machine, several at once; only a hung VM reaches it.
VM_BOOT_TIMEOUT_S = 900.0
# For a module's first test: the image may be built first (debootstrap from the mirror),
# then its VMs boot together.
MODULE_TIMEOUT_S = vm_image.BUILD_TIMEOUT_S + VM_BOOT_TIMEOUT_S + 300


def image_or_skip() -> Path:
    missing = tiny_vm.missing_tools() + vm_image.missing_tools()
    if missing:
        pytest.skip("cannot boot the cloud-init VM: " + "; ".join(missing))
    return vm_image.ensure_image(log=print)


def add_vm(hv: Hypervisor, api: str, vm: Vm, bridge: str, datapath: str,
           **fields: object) -> None:
    """The record first (parked: it names no port yet), then the tap hot-plugged while
    the daemon runs, then the binding to it: a VM manager's order."""
    record = {"mac": vm.mac, "bridge": bridge, "hostname": vm.name,
              "ssh_keys": {vm_image.DEFAULT_USER: vm.ssh_key}, "user_data": vm.user_data(),
              **fields}
    if vm.ip:
        record["ip"] = vm.ip
    hot_plug_tap(hv, vm.tap, bridge, datapath)
    with ApiClient(api) as client:
        put = client.request("PUT", f"/v1/instances/{vm.name}", record)
        assert put.status == 201, put.body
        bound = client.request("PUT", f"/v1/instances/{vm.name}/binding", {"port": vm.tap})
        assert bound.status == 200, bound.body


def boot_all(hv: Hypervisor, workdir: Path, image: Path,
             vms: Sequence[tuple[Vm, cloud_vm.Smbios]]) -> dict[str, cloud_vm.Boot]:
    """Boot every VM at once (each on its own tap, in the hypervisor's namespace)."""
    initramfs = cloud_vm.build_initramfs(workdir / "initramfs")
    boots: dict[str, cloud_vm.Boot] = {}

    def one(vm: Vm, smbios: cloud_vm.Smbios) -> None:
        console = workdir / f"console-{vm.name}.log"
        argv = cloud_vm.qemu_argv(image, initramfs, console, tap=vm.tap, mac=vm.mac,
                                  smbios=smbios)
        boots[vm.name] = cloud_vm.boot(argv, console,
                                       lambda a, **kw: hv.topo.spawn(hv.ns, a, **kw),
                                       VM_BOOT_TIMEOUT_S)

    threads = [threading.Thread(target=one, args=pair) for pair in vms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, boot in boots.items():
        print(f"VM {name}: {boot.seconds:.0f} s to its report ({tiny_vm.accelerator()})")
    return boots


def assert_configured(boot: cloud_vm.Boot, vm: Vm, datasource: str) -> cloud_vm.Report:
    """cloud-init took hostname, SSH key and user-data from the record, through
    `datasource` (cloud-init's class name, as status.json gives it)."""
    report = boot.report
    tail = boot.console[-6000:]
    assert report is not None, f"{vm.name}: no report after {boot.seconds:.0f} s:\n{tail}"
    evidence = "\n".join(report.log + report.addresses) + "\n" + tail
    assert report.datasource.startswith(datasource), (report.datasource, evidence)
    assert report.fields.get("hostname") == vm.name, (report.fields, evidence)
    assert report.keys == [vm.ssh_key], (report.keys, evidence)
    assert f"{vm.marker} {vm.name}" in boot.console, evidence
    assert not report.json("status").get("v1", {}).get("errors"), report.fields["status"]
    return report
