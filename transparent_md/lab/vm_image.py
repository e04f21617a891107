"""The lab's Debian 12 cloud-init disk image: built once from deb.debian.org, then cached.

cloud.debian.org's images are not reachable from every lab host, the package mirror is:
so the image is `debootstrap`ed from bookworm with cloud-init, the network stack Debian's
cloud images use (ifupdown, isc-dhcp-client) and openssh-server, and written as a plain
ext4 file with `mke2fs -d` (no loop mount, no root-only block device). It holds no
kernel: the VM boots the host's Debian kernel with a small initramfs of the tests' own
that mounts the disk and hands over to its systemd, so the image does not depend on
the host's kernel version and stays small.

One lab unit is added, `tmd-lab-report.service`: after cloud-init's final stage it prints
what cloud-init did (hostname, the default user's authorized_keys, the datasource it
chose, its warnings) between markers on the serial console and powers the VM off, so
a test reads the result from the console without ssh.

The image is cached outside any checkout (default /var/cache/transparent-md-lab, or
$TMD_VM_CACHE), named by a hash of this recipe, and built under a lock, so a CI clone
reuses it and a changed recipe builds a new one. Boots must not write to it: qemu's
`-snapshot` keeps every write in a temporary overlay.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "TMD_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/transparent-md-lab")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the checks need, as Debian's cloud images have it: cloud-init and its network
# renderer's tools, sshd (cloud-init's ssh module generates host keys with its
# ssh-keygen), udev to name the NIC. python3-cffi-backend: debootstrap cannot resolve the
# virtual package python3-cryptography depends on.
PACKAGES = ("systemd-sysv", "udev", "cloud-init", "ifupdown", "isc-dhcp-client",
            "openssh-server", "iproute2", "netbase", "python3-cffi-backend")
IMAGE_SIZE = "2G"
IMAGE_PATTERN = "debian12-cloud-*.ext4"  # "*": the recipe's hash
# Debootstrap and apt fetch a few hundred packages; a slow mirror gets room.
BUILD_TIMEOUT_S = 1800.0
# The console markers the report unit prints (the tests parse between them).
REPORT_BEGIN = "TMD-VM-REPORT-BEGIN"
REPORT_END = "TMD-VM-REPORT-END"
DEFAULT_USER = "debian"  # Debian's cloud.cfg default_user: SSH keys go to it

FSTAB = "/dev/vda / ext4 rw,errors=remount-ro 0 0\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
# As Debian's cloud images: cloud-init writes interfaces.d/50-cloud-init.
INTERFACES = "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"
REPORT_SCRIPT = f"""#!/bin/sh
# Prints what cloud-init made of this boot on the serial console, then powers off.
exec >/dev/ttyS0 2>&1
echo {REPORT_BEGIN}
echo "hostname: $(hostname)"
echo "keys: $(cat /home/{DEFAULT_USER}/.ssh/authorized_keys 2>/dev/null | tr '\\n' '|')"
echo "status: $(tr -d '\\n' </run/cloud-init/status.json 2>/dev/null)"
echo "result: $(tr -d '\\n' </run/cloud-init/result.json 2>/dev/null)"
echo "ds-identify: $(grep -h '^datasource_list' /run/cloud-init/cloud.cfg 2>/dev/null)"
ip -o addr show scope global | sed 's/^/addr: /'
{{ ip -o route show; ip -o -6 route show; }} | sed 's/^/route: /'
grep -hE 'WARNING|ERROR|CRITICAL|Using metadata source|Crawl of metadata|Giving up|\
Getting data from|link-local|IMDSv2|api/token|DHCP|dhclient' /var/log/cloud-init.log \\
    | tail -n 200 \\
    | sed 's/^/log: /'
echo {REPORT_END}
poweroff -f
"""
REPORT_UNIT = """[Unit]
Description=Print cloud-init's result on the serial console (transparent-md lab)
After=cloud-final.service
Wants=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tmd-lab-report

[Install]
WantedBy=cloud-init.target
"""
# Files written into the root, relative to it, with their modes.
FILES = {
    "etc/fstab": (FSTAB, 0o644),
    "etc/hostname": ("localhost\n", 0o644),
    "etc/hosts": (HOSTS, 0o644),
    # As debootstrapped systems have it; cloud-init's locale module then has nothing to do.
    "etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    "etc/machine-id": ("", 0o444),  # first boot: systemd makes one
    "etc/network/interfaces": (INTERFACES, 0o644),
    "usr/local/sbin/tmd-lab-report": (REPORT_SCRIPT, 0o755),
    "etc/systemd/system/tmd-lab-report.service": (REPORT_UNIT, 0o644),
    "etc/systemd/system/cloud-init.target.wants/tmd-lab-report.service":
        ("@/etc/systemd/system/tmd-lab-report.service", 0),
}
# Units no check needs, each a few seconds under emulation.
MASKED_UNITS = ("ssh.service", "e2scrub_reap.service", "apt-daily.timer",
                "apt-daily-upgrade.timer", "systemd-timesyncd.service")


def recipe_key() -> str:
    """Names the image: changes whenever anything that goes into it does."""
    recipe = repr((SUITE, MIRROR, PACKAGES, IMAGE_SIZE, sorted(FILES.items()), MASKED_UNITS))
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def image_path() -> Path:
    return cache_dir() / IMAGE_PATTERN.replace("*", recipe_key())


def missing_tools() -> list[str]:
    """What this machine lacks to build the image (the packages scripts/setup adds)."""
    return [f"{tool} (apt-get install {package})"
            for tool, package in (("debootstrap", "debootstrap"), ("mke2fs", "e2fsprogs"))
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]


def ensure_image(log=print) -> Path:
    """The cached image, built first if absent (one builder at a time, under a lock)."""
    path = image_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent / ".build.lock"):
        if not path.exists():  # another builder may have finished while we waited
            build(path, log)
            for stale in path.parent.glob(IMAGE_PATTERN):  # older recipes' images
                if stale != path:
                    stale.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(path: Path, log=print) -> None:
    """debootstrap, configure, mke2fs -d; the image appears at `path` only when whole."""
    work = path.parent / f".build-{path.stem}"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    started = time.monotonic()
    try:
        log(f"vm image: debootstrap {SUITE} from {MIRROR} into {root}")
        debs = path.parent / "debs"
        debs.mkdir(exist_ok=True)
        _run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}",
              "--include=" + ",".join(PACKAGES), SUITE, str(root), MIRROR])
        configure(root)
        log("vm image: writing the ext4 file")
        partial = work / "image.ext4"
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "tmd-root", "-d", str(root), str(partial),
              IMAGE_SIZE])
        os.replace(partial, path)
    finally:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    log(f"vm image: {path} ({path.stat().st_size >> 20} MiB sparse file, "
        f"{_used_mib(path)} MiB used) in {time.monotonic() - started:.0f} s")


def configure(root: Path) -> None:
    """The lab's files and masks in a debootstrapped root."""
    for relative, (text, mode) in FILES.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        if text.startswith("@"):
            target.symlink_to(text[1:])
            continue
        target.write_text(text)
        target.chmod(mode)
    for unit in MASKED_UNITS:
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    # Nothing of the build host's may stay behind: its apt cache and its resolv.conf.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / leftover).glob("*.deb" if "archives" in leftover else "*_*"):
            item.unlink()
    (root / "etc/resolv.conf").unlink(missing_ok=True)


def _unmount_under(directory: Path) -> None:
    """debootstrap mounts /proc and /sys in the root it builds; an interrupted one leaves
    them mounted, and nothing under them may be removed."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _used_mib(path: Path) -> int:
    return os.stat(path).st_blocks * 512 >> 20


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transparent_md.lab.vm_image",
        description="Build (or find) the lab's Debian 12 cloud-init image that the VM "
                    "tests boot. It is cached in $TMD_VM_CACHE, else "
                    f"{DEFAULT_CACHE}, named by a hash of the recipe; needs root, "
                    "debootstrap and deb.debian.org.")
    parser.add_argument("--path", action="store_true",
                        help="print where the image is (or would be) and exit")
    parser.add_argument("--rebuild", action="store_true",
                        help="build it again even if it is cached")
    args = parser.parse_args(argv)
    if args.path:
        print(image_path())
        return 0
    missing = missing_tools()
    if missing:
        print("vm image: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    if args.rebuild:
        image_path().unlink(missing_ok=True)
    print(ensure_image())
    return 0


if __name__ == "__main__":
    sys.exit(main())
