"""Booting the lab's Debian 12 cloud-init image (transparent_md/lab/vm_image.py) in qemu,
on a tap of a test's bridge, and reading what cloud-init did from its serial console.

The kernel is the host's Debian kernel (tests/libvirt/tiny_vm.py finds it); the initramfs
is written here: busybox loads the virtio disk, NIC and ext4 modules, mounts the disk and
hands over to the image's systemd, which boots as a cloud image does (ds-identify,
cloud-init's four stages, ifupdown). The disk is opened with snapshot=on: the cached image
is never written. The cloud is told by SMBIOS, as hypervisors tell it: system vendor,
product name, serial number and UUID.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.libvirt import tiny_vm
from transparent_md.lab.vm_image import REPORT_BEGIN, REPORT_END

ROOT_MODULES = (*tiny_vm.VIRTIO_NIC_MODULES, "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/ext4/ext4.ko", "kernel/crypto/crc32c_generic.ko")
# systemd, cloud-init's Python and its modules: more than the tiny guest's busybox.
VM_MEMORY_MIB = 1024
# Seconds the initramfs waits for the virtio disk to appear after its module loaded.
DISK_WAIT_S = 10
# After the report's last line the VM powers itself off; a VM that does not is killed.
POWEROFF_GRACE_S = 30.0
CONSOLE_POLL_S = 0.5

SWITCH_ROOT_INIT = f"""#!/bin/busybox sh
{tiny_vm.INIT_PREAMBLE}mount -t devtmpfs dev /dev
{tiny_vm.LOAD_MODULES}tries=0
while [ ! -b /dev/vda ] && [ $tries -lt {DISK_WAIT_S * 10} ]; do sleep 0.1; tries=$((tries+1)); done
mount -t ext4 -o rw /dev/vda /root || {{ echo "initramfs: cannot mount /dev/vda"; poweroff -f; }}
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
"""


@dataclass(frozen=True)
class Smbios:
    """SMBIOS type 1 (system) strings: what cloud-init's ds-identify reads in /sys/class/dmi."""
    manufacturer: str = "QEMU"
    product: str = "Standard PC"
    serial: str = ""
    uuid: str = ""

    def argv(self) -> list[str]:
        fields = [f"manufacturer={self.manufacturer}", f"product={self.product}"]
        # qemu's -smbios splits on commas: a literal comma is written twice.
        fields += [f"serial={self.serial.replace(',', ',,')}"] if self.serial else []
        fields += [f"uuid={self.uuid}"] if self.uuid else []
        return ["-smbios", "type=1," + ",".join(fields)]


@dataclass
class Report:
    """What the image's report unit printed (see vm_image.REPORT_SCRIPT)."""
    fields: dict[str, str] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [k for k in self.fields.get("keys", "").split("|") if k]

    def json(self, name: str) -> dict:
        text = self.fields.get(name, "")
        return json.loads(text) if text else {}

    @property
    def datasource(self) -> str:
        """cloud-init's own name for the datasource it used (status.json)."""
        return self.json("status").get("v1", {}).get("datasource") or ""


def build_initramfs(path: Path) -> Path:
    kernel = tiny_vm.find_kernel()
    return tiny_vm.build_initramfs(path, kernel, SWITCH_ROOT_INIT, ROOT_MODULES)


def qemu_argv(image: Path, initramfs: Path, console_log: Path, *, tap: str, mac: str,
              smbios: Smbios, cmdline: Sequence[str] = ()) -> list[str]:
    kernel = tiny_vm.find_kernel()
    append = " ".join(["console=ttyS0", "panic=-1", *cmdline])
    return [
        "qemu-system-x86_64", "-accel", tiny_vm.accelerator(), "-m", str(VM_MEMORY_MIB),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{console_log}",
        "-kernel", str(kernel.image), "-initrd", str(initramfs), "-append", append,
        "-drive", f"file={image},if=virtio,format=raw,snapshot=on",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        *smbios.argv(),
    ]


@dataclass
class Boot:
    returncode: int | None
    seconds: float
    console: str
    report: Report | None


def boot(argv: Sequence[str], console_log: Path, spawn: Callable[..., subprocess.Popen],
         timeout: float) -> Boot:
    """Start qemu with `spawn` (inside the test's namespace) and wait until the report is
    printed and the VM is off, or `timeout`; a VM still running then is killed (by PID)."""
    started = time.monotonic()
    proc = spawn(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    deadline = started + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if REPORT_END in _read(console_log):
                deadline = min(deadline, time.monotonic() + POWEROFF_GRACE_S)
            time.sleep(CONSOLE_POLL_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    seconds = time.monotonic() - started
    console = _read(console_log)
    return Boot(proc.returncode, seconds, console, parse_report(console))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def parse_report(console: str) -> Report | None:
    lines = console.replace("\r", "").split("\n")
    if REPORT_BEGIN not in lines or REPORT_END not in lines:
        return None
    begin = lines.index(REPORT_BEGIN)
    report = Report()
    for line in lines[begin + 1:lines.index(REPORT_END, begin)]:
        name, _, value = line.partition(": ")
        if name == "addr":
            report.addresses.append(value)
        elif name == "log":
            report.log.append(value)
        else:
            report.fields[name] = value
    return report
