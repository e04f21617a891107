"""A real qemu guest small enough to boot inside a test: Debian's kernel, an initramfs
holding a static busybox and the virtio NIC's modules, and an /init that asks the
metadata service a few paths, prints what it got on the serial console and powers off.

No disk image and no download: the kernel comes from the linux-image-amd64 package and
the shell from busybox-static (both in scripts/setup). The initramfs is written here,
into the test's tmp directory, as a plain newc cpio archive (no cpio tool needed).
"""

from __future__ import annotations

import glob
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = "/bin/busybox"
# Debian builds virtio and virtio_net as modules; these pull in the rest from modules.dep
# (virtio, virtio_ring, the PCI transport halves, failover and net_failover).
VIRTIO_NIC_MODULES = ("kernel/drivers/virtio/virtio_pci.ko",
                      "kernel/drivers/net/virtio_net.ko")
# Lines the guest's /init prints around each answer, so the kernel's own console output
# (and the CRs a serial line adds) never mix into what is parsed.
RESULT_BEGIN = "TMD-GUEST-BEGIN"
RESULT_END = "TMD-GUEST-END"
GUEST_DONE = "TMD-GUEST-DONE"
# Enough for the kernel, the modules and busybox wget; the guest runs nothing else.
GUEST_MEMORY_MIB = 256
# Seconds each busybox wget may take inside the guest: a forger's request that
# is dropped must end the guest's run, not hang it.
GUEST_WGET_TIMEOUT_S = 10
# The kernel's /dev/console (major 5, minor 1): /init's output reaches ttyS0 through it.
CONSOLE_DEVICE = (5, 1)
# ELF64 header offsets of the program header table and its entry size and count, and
# the program header type naming a dynamic loader.
ELF64_PHOFF = 0x20
ELF64_PHENTSIZE = 0x36
PT_INTERP = 3
# newc cpio: every header and every file's data start on a 4-byte boundary.
CPIO_ALIGN = 4

# How every initramfs /init of the tests begins: busybox's applets, /proc and /sys.
INIT_PREAMBLE = """export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
"""
# The modules the initramfs carries, in modules.dep order.
LOAD_MODULES = ('for m in $(cat /modules.order); do insmod "/modules/$m" '
                '|| echo "insmod $m failed"; done\n')

INIT_SCRIPT = f"""#!/bin/busybox sh
# Arguments come from the kernel command line as environment variables (no dot in
# their names, so the kernel hands them to init): tmd_addr, tmd_paths.
{INIT_PREAMBLE}{LOAD_MODULES}ip link set lo up
ip link set eth0 up
ip addr add "$tmd_addr" dev eth0
# On-link route, as DHCP option 121 would give (libvirt guests get it that way).
ip route add 169.254.169.254/32 dev eth0
for path in $(echo "$tmd_paths" | tr , ' '); do
    # timeout, not wget -T: Debian's busybox-static 1.35 wget crashes with -T.
    timeout {GUEST_WGET_TIMEOUT_S} wget -q -S -O /tmp/body "http://169.254.169.254$path" \\
        2>/tmp/headers
    status=$(sed -n 's#^ *HTTP/1\\.[01] \\([0-9]*\\).*#\\1#p' /tmp/headers | tail -n 1)
    sed 's/^/wget: /' /tmp/headers  # outside the markers: for a human reading the log
    echo "{RESULT_BEGIN} $path ${{status:-0}}"
    cat /tmp/body 2>/dev/null
    echo
    echo "{RESULT_END}"
    rm -f /tmp/body
done
echo "{GUEST_DONE}"
poweroff -f
"""


@dataclass(frozen=True)
class Kernel:
    image: Path      # /boot/vmlinuz-<version>
    modules: Path    # /lib/modules/<version>


def find_kernel() -> Kernel | None:
    """A bootable kernel whose virtio NIC modules are installed, or None."""
    for image in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        version = image.removeprefix("/boot/vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").is_file() and os.access(image, os.R_OK):
            return Kernel(Path(image), modules)
    return None


def missing_tools() -> list[str]:
    """What this machine lacks to boot the tiny guest (the packages scripts/setup adds)."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (apt-get install qemu-system-x86)")
    if find_kernel() is None:
        missing.append("a kernel in /boot with its modules (apt-get install linux-image-amd64)")
    if not _is_static(BUSYBOX):
        missing.append(f"a static {BUSYBOX} (apt-get install busybox-static)")
    return missing


def _is_static(path: str) -> bool:
    """A static ELF64 has no PT_INTERP header: /init runs before any dynamic loader."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, ELF64_PHOFF)
    phentsize, phnum = struct.unpack_from("<HH", data, ELF64_PHENTSIZE)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != PT_INTERP
               for i in range(phnum))


def accelerator() -> str:
    """"kvm" where the CPU exposes hardware virtualisation to us, else "tcg".

    /dev/kvm alone is not enough: a host running under PVM (kvm_pvm, no vmx/svm flag
    in /proc/cpuinfo) opens /dev/kvm, but it runs only PVM-built guest kernels; Debian's
    kernel hangs there before its first line. TCG (emulation) boots it in seconds.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    words = set(flags.group(1).split()) if flags else set()
    return "kvm" if words & {"vmx", "svm"} else "tcg"


def module_load_order(modules_dir: Path, wanted: Sequence[str]) -> list[str]:
    """`wanted` and their dependencies, each after what it needs (modules.dep paths)."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dep in deps.get(module, []):
            visit(dep)
        order.append(module)

    for stem in wanted:
        module = next((m for m in deps if m == stem or m.startswith(stem + ".")), None)
        if module is None:
            raise FileNotFoundError(f"{stem} not in {modules_dir}/modules.dep")
        visit(module)
    return order


def _module_bytes(path: Path) -> bytes:
    """A module as insmod takes it: busybox insmod reads no compressed modules."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


class _Cpio:
    """A newc cpio archive, the format the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.inode = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        self.parts += [header, _pad(len(header)), data, _pad(len(data))]

    def bytes(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % CPIO_ALIGN)


def build_initramfs(path: Path, kernel: Kernel, init_script: str = INIT_SCRIPT,
                    modules: Sequence[str] = VIRTIO_NIC_MODULES) -> Path:
    """Write the guest's initramfs to `path`: busybox, /init, `modules` (and what they
    need); /init loads them in order from /modules.order."""
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "modules", "root"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=CONSOLE_DEVICE)
    archive.add("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, init_script.encode())
    loaded = []  # flat under /modules: insmod takes a file, modprobe's tree is not needed
    for module in module_load_order(kernel.modules, modules):
        name = os.path.basename(module).removesuffix(".xz")
        archive.add(f"modules/{name}", stat.S_IFREG | 0o644,
                    _module_bytes(kernel.modules / module))
        loaded.append(name)
    archive.add("modules.order", stat.S_IFREG | 0o644, "\n".join(loaded).encode() + b"\n")
    path.write_bytes(archive.bytes())
    return path


def qemu_argv(kernel: Kernel, initramfs: Path, console_log: Path, *, tap: str, mac: str,
              addr: str, paths: Sequence[str], accel: str | None = None) -> list[str]:
    """qemu on an existing tap `tap` (as libvirt passes it one), NIC `mac`, guest `addr`.

    -nodefaults: no slirp NIC or other device behind our back; the serial console goes
    to `console_log`; -no-reboot and panic=-1 make a crash end qemu instead of looping.
    """
    append = " ".join([
        "console=ttyS0", "quiet", "panic=-1",
        f"tmd_addr={addr}", f"tmd_paths={','.join(paths)}",
    ])
    return [
        "qemu-system-x86_64", "-accel", accel or accelerator(), "-m", str(GUEST_MEMORY_MIB),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{console_log}",
        "-kernel", str(kernel.image), "-initrd", str(initramfs), "-append", append,
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        # romfile=: no iPXE option ROM, the kernel is loaded directly.
        "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
    ]


@dataclass(frozen=True)
class Answer:
    status: int   # 0: no HTTP answer at all
    body: str


def parse_console(text: str) -> dict[str, Answer]:
    """The answers /init printed, by path (the kernel's lines around them ignored).

    A body's final newline is not kept: /init ends every body with one of its own.
    """
    answers = {}
    lines = text.replace("\r", "").split("\n")
    for i, line in enumerate(lines):
        if not line.startswith(RESULT_BEGIN + " "):
            continue
        _, path, status = line.split(" ")
        end = lines.index(RESULT_END, i)
        body = "\n".join(lines[i + 1:end]).removesuffix("\n")  # a body's own newline
        answers[path] = Answer(int(status), body)
    return answers


def boot(argv: Sequence[str], spawn, timeout: float) -> subprocess.Popen:
    """Start qemu with `spawn` (the topology's, inside the hypervisor namespace) and wait
    for it to power off; on timeout it is killed (it alone, by its PID)."""
    proc = spawn(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc
