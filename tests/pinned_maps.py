"""The programs compiled and their maps pinned under a throw-away directory, for tests
that drive the maps the way the daemon and its helpers do (through the pins)."""

from __future__ import annotations

import ctypes
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transparent_md.datapath import bpffs, layout, programs
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.names import PIN_ROOT


@contextmanager
def pinned_programs(config: layout.Config) -> Iterator[tuple[object, dict, Path]]:
    """(loaded programs, {map name: BpfMap}, pin dir) with `config` written; unpinned after."""
    loaded = programs.load_programs()
    bpffs.ensure_mounted()
    pin_dir = PIN_ROOT / f"test-{secrets.token_hex(4)}"
    bpffs.pin_maps(pin_dir, {m: loaded.map_fd(m) for m in layout.ALL_MAPS})
    maps = {m: BpfMap(loaded.map_fd(m), owned=False) for m in layout.ALL_MAPS}
    maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), config)
    try:
        yield loaded, maps, pin_dir
    finally:
        bpffs.unpin(pin_dir)
        loaded.bpf.cleanup()
