"""What an operator installs, made once per test run, for the tests that matter to an
operator: `scripts/install` into a temporary prefix, and the .deb that `scripts/package`
builds, installed with dpkg.

The .deb installs into this machine's root (its venv must live in /opt/transparent-md,
as on a hypervisor): only as root, only when no transparent-md package, /opt or /etc
directory is there, one test run at a time (a lock), and purged afterwards with
everything it or the tests made, also on failure. A /var/lib/transparent-md that
exists before is moved aside and put back.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGE = "transparent-md"
# What libvirtd gives its hooks: this PATH and no other variable.
LIBVIRTD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# For `python -m transparent_md` from an install: without it, -m puts the current
# directory (this checkout) first on sys.path, and the checkout's code would run.
INSTALLED_ONLY = {"PYTHONSAFEPATH": "1"}
# Building runs pip and lintian; both take minutes on a loaded machine.
BUILD_TIMEOUT_S = 900
DPKG_TIMEOUT_S = 300
# Another dpkg (apt on the shared machine) may hold its lock for a while.
DPKG_LOCK_WAIT_S = 300
# The package's own places: present before the test means a real install to leave alone.
INSTALL_DIRS = (Path("/opt/transparent-md"), Path("/etc/transparent-md"))
# The state directory: a test that ran `run` with a default path may have made it. It is
# moved aside for the package's tests and put back afterwards.
STATE_DIR = Path("/var/lib/transparent-md")
PACKAGE_DIRS = (*INSTALL_DIRS, STATE_DIR)
TEST_LOCK = Path("/run/lock/transparent-md-package-test.lock")


@dataclass(frozen=True)
class Install:
    """Where one install put things."""

    cli: Path            # the command on PATH
    python: Path         # the venv's interpreter
    unit: Path
    libvirt_hook: Path
    proxmox_hook: Path
    conf_dir: Path
    doc_dir: Path

    def hook_conf(self) -> Path:
        return self.conf_dir / "libvirt-hook.conf"


def prefix_layout(prefix: Path) -> Install:
    return Install(cli=prefix / "bin" / PACKAGE, python=prefix / "venv" / "bin" / "python",
                   unit=prefix / "lib" / "systemd" / "system" / f"{PACKAGE}.service",
                   libvirt_hook=prefix / "share" / PACKAGE / "libvirt-qemu",
                   proxmox_hook=prefix / "share" / PACKAGE / "proxmox-hook.pl",
                   conf_dir=prefix / "etc" / PACKAGE,
                   doc_dir=prefix / "share" / "doc" / PACKAGE)


PACKAGE_LAYOUT = Install(
    cli=Path("/usr/bin") / PACKAGE, python=Path("/opt/transparent-md/venv/bin/python"),
    unit=Path("/lib/systemd/system") / f"{PACKAGE}.service",
    libvirt_hook=Path("/usr/share") / PACKAGE / "libvirt-qemu",
    proxmox_hook=Path("/usr/share") / PACKAGE / "proxmox-hook.pl",
    conf_dir=Path("/etc") / PACKAGE, doc_dir=Path("/usr/share/doc") / PACKAGE)


def run_as_libvirtd(argv: list[str], stdin: bytes = b"",
                    timeout: float = 60) -> subprocess.CompletedProcess:
    """`argv` with libvirtd's environment and nothing else."""
    return subprocess.run(argv, input=stdin, capture_output=True, env=dict(LIBVIRTD_ENV),
                          timeout=timeout)


def systemd_analyze(unit: str, *, man: bool) -> tuple[subprocess.CompletedProcess, float | None]:
    """`systemd-analyze verify` of `unit` (checking its man: pages if `man`), and the
    overall exposure `systemd-analyze security --offline=true` gives it (None: unread)."""
    verify = subprocess.run(["systemd-analyze", "verify", f"--man={'yes' if man else 'no'}",
                             unit], capture_output=True, text=True, timeout=120)
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                               unit], capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    return verify, float(found.group(1)) if found else None


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("installing needs root")


def install_prefix(prefix: Path, *extra: str) -> Install:
    res = subprocess.run(["bash", str(CHECKOUT / "scripts" / "install"), "--prefix",
                          str(prefix), *extra], capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return prefix_layout(prefix)


def installed_version() -> str | None:
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", PACKAGE],
                         capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.startswith("install ok installed"):
        return None
    return res.stdout.split()[-1]


def dpkg(*args: str) -> subprocess.CompletedProcess:
    """dpkg ARGS, waiting (with a deadline) while another dpkg holds its lock."""
    deadline = time.monotonic() + DPKG_LOCK_WAIT_S
    while True:
        res = subprocess.run(["dpkg", *args], capture_output=True, text=True,
                             timeout=DPKG_TIMEOUT_S,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        locked = "lock" in res.stderr and res.returncode != 0
        if not locked or time.monotonic() > deadline:
            return res
        time.sleep(1)


def build_package(out: Path) -> Path:
    res = subprocess.run(["bash", str(CHECKOUT / "scripts" / "package"), "--out", str(out)],
                         capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-4000:]
    return Path(res.stdout.strip().splitlines()[-1])


def newer_revision(deb: Path, out: Path) -> tuple[Path, str]:
    """The same package with its Debian revision raised by one: what a rebuild ships."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    fields = control.read_text()
    old = next(line.split(": ", 1)[1] for line in fields.splitlines()
               if line.startswith("Version: "))
    upstream, revision = old.rsplit("-", 1)
    new = f"{upstream}-{int(revision) + 1}"
    control.write_text(fields.replace(f"Version: {old}\n", f"Version: {new}\n"))
    newer = out / f"{PACKAGE}_{new}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return newer, new


@pytest.fixture(scope="session")
def installed_prefix(tmp_path_factory) -> Install:
    """`scripts/install --prefix` into a temporary directory, once per run."""
    _need_root()
    return install_prefix(tmp_path_factory.mktemp("prefix"))


@dataclass(frozen=True)
class Package:
    deb: Path
    version: str
    install: Install
    work: Path


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory) -> Iterator[Package]:
    """The .deb built by scripts/package and installed with `dpkg -i`, once per run;
    purged afterwards with everything it made."""
    _need_root()
    for tool in ("dpkg-deb", "lintian"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup installs it)")
    TEST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(TEST_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version() is not None:
            pytest.skip("transparent-md is installed on this machine; not touching it")
        present = [str(d) for d in INSTALL_DIRS if d.exists()]
        if present:
            pytest.skip(f"{', '.join(present)} exist(s); not touching a real install")
        work = tmp_path_factory.mktemp("package")
        aside = STATE_DIR.with_name(f"{STATE_DIR.name}.before-package-test-{os.getpid()}")
        if STATE_DIR.exists():
            STATE_DIR.rename(aside)
        try:
            deb = build_package(work)
            res = dpkg("-i", str(deb))
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            yield Package(deb=deb, version=installed_version() or "", install=PACKAGE_LAYOUT,
                          work=work)
        finally:
            dpkg("--purge", PACKAGE)
            for directory in PACKAGE_DIRS:
                shutil.rmtree(directory, ignore_errors=True)
            if aside.exists():
                aside.rename(STATE_DIR)
