"""Pinning the maps on bpffs, so other processes (responder workers) can open them."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from transparent_md.datapath import bpf_syscall
from transparent_md.errors import UserError
from transparent_md.process import libc as _libc

BPFFS_ROOT = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: Path) -> bool:
    try:
        return _fs_type(path) == BPF_FS_MAGIC
    except OSError:
        return False


def _fs_type(path: Path) -> int:
    # statfs(2) f_type is the first field (a long) of struct statfs on Linux.
    buf = ctypes.create_string_buffer(120)
    if _libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def ensure_mounted() -> None:
    """Mount bpffs on /sys/fs/bpf unless it is there already."""
    if is_bpffs(BPFFS_ROOT):
        return
    if not BPFFS_ROOT.is_dir():
        raise UserError(f"{BPFFS_ROOT} does not exist: is sysfs mounted on /sys?")
    if _libc.mount(b"bpf", str(BPFFS_ROOT).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise UserError(
            f"cannot mount bpffs on {BPFFS_ROOT}: {os.strerror(err)}. Mount it yourself "
            f"(`mount -t bpf bpf {BPFFS_ROOT}`) or run where mounting is allowed."
        )


def pin_maps(directory: Path, fds: dict[str, int]) -> None:
    """Pin each map as directory/<map name>, replacing stale pins of an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    for map_name, fd in fds.items():
        target = directory / map_name
        if target.exists():
            target.unlink()
        bpf_syscall.obj_pin(fd, str(target))


def unpin(directory: Path) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()
