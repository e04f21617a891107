"""Compile and load the tc programs in bpf/ with bcc.

bcc rewrites map method calls (`tmd_slots.lookup(...)`) only in its main file, so the
headers and both programs are joined into one unit; `#line` markers keep compiler
messages pointing at the right file and line.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transparent_md.datapath import bpf_syscall, contract
from transparent_md.errors import UserError

# In a checkout this is a link to the top-level bpf/; an installed package carries a copy.
BPF_DIR = Path(__file__).resolve().parent / "bpf"
# Order matters: headers before the programs that use them.
UNIT_FILES = ("include/tmd_maps.h", "include/tmd_packet.h", "port_ingress.c", "md_ingress.c")
PORT_PROGRAM = "port_ingress"
MD_PROGRAM = "md_ingress"

_LOCAL_INCLUDE = re.compile(r'(?m)^#include "tmd_\w+\.h"$')


@dataclass
class LoadedPrograms:
    """The bcc module (keeps programs and maps alive) and the two program handles."""

    bpf: Any
    port_fd: int
    md_fd: int

    def map_fd(self, name: str) -> int:
        return self.bpf.get_table(name.encode()).get_fd()

    def table(self, name: str) -> Any:
        return self.bpf.get_table(name.encode())


def compilation_unit() -> str:
    parts = []
    for rel in UNIT_FILES:
        source = (BPF_DIR / rel).read_text()
        # Blank out our own includes (the line stays, so line numbers stay right).
        parts.append(f'#line 1 "{rel}"\n' + _LOCAL_INCLUDE.sub("", source))
    return "\n".join(parts)


def check_kernel_headers() -> None:
    """bcc needs /lib/modules/<release>/build; this kernel ships none."""
    build = Path("/lib/modules") / platform.release() / "build"
    if not (build / "include").is_dir():
        raise UserError(
            f"kernel headers missing: {build} does not exist, and bcc needs them to compile "
            "the BPF programs. Install Debian's linux-headers-amd64 and link "
            f"{build} -> /usr/src/linux-headers-<ver>-amd64 and "
            f"{build.parent / 'source'} -> /usr/src/linux-headers-<ver>-common "
            "(scripts/setup does both)."
        )


def import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - heavy import, only where programs are compiled
    except ImportError as exc:
        raise UserError(
            "python module 'bcc' not found: install Debian's python3-bpfcc and make "
            "/usr/lib/python3/dist-packages/bcc visible to this interpreter "
            "(scripts/setup does this for .venv)."
        ) from exc
    return bcc


def load_programs(extra_cflags: tuple[str, ...] = ()) -> LoadedPrograms:
    """Compile the unit and load both tc programs; raises UserError with the fix."""
    if os.geteuid() != 0:
        raise UserError("must run as root: loading BPF programs and changing tc needs it")
    check_kernel_headers()
    bcc = import_bcc()
    try:
        module = bcc.BPF(text=compilation_unit().encode(), cflags=list(extra_cflags))
        port = module.load_func(PORT_PROGRAM.encode(), bcc.BPF.SCHED_CLS)
        md = module.load_func(MD_PROGRAM.encode(), bcc.BPF.SCHED_CLS)
    except Exception as exc:  # bcc raises bare Exception for compile and load errors
        raise UserError(
            f"could not compile or load the BPF programs: {exc}. Check that the bpf(2) "
            "syscall is allowed (not blocked by seccomp or kernel.unprivileged_bpf_disabled) "
            "and that the kernel headers match closely enough."
        ) from exc
    return LoadedPrograms(bpf=module, port_fd=port.fd, md_fd=md.fd)


@dataclass
class PinnedPrograms:
    """Program file descriptors opened from their pins (no bcc in this process)."""

    port_fd: int
    md_fd: int

    def close(self) -> None:
        for fd in (self.port_fd, self.md_fd):
            os.close(fd)


def compile_and_pin(pin_dir: Path, extra_cflags: tuple[str, ...] = ()) -> PinnedPrograms:
    """Compile in a child process that pins programs and maps in `pin_dir`, then open them.

    A failure in the child (missing headers, no bpf syscall) arrives here as the same
    one-line UserError it would have raised in-process.
    """
    child = subprocess.run(
        [sys.executable, "-m", "transparent_md.datapath.compile_child", str(pin_dir),
         *extra_cflags],
        capture_output=True, text=True,
    )
    if child.returncode != 0:
        message = (child.stderr.strip().splitlines()[-1] if child.stderr.strip()
                   else f"BPF compile helper failed with exit code {child.returncode}")
        if child.returncode == contract.EXIT_CODE:
            raise contract.ContractError(message)
        raise UserError(message)
    return PinnedPrograms(
        port_fd=bpf_syscall.obj_get(str(pin_dir / PORT_PROGRAM)),
        md_fd=bpf_syscall.obj_get(str(pin_dir / MD_PROGRAM)),
    )
