"""The datapath's tables, from either source: pinned BPF maps (tc) or shared files (raw).

Everything above the datapath that reads or writes a table (identity's ShadowResolver,
the slot releaser, the per-port limits, `identity locks`) opens it here by name and gets
an object with the calls of `BpfMap` it uses: lookup, update, delete, keys, items,
lookup_percpu_u64, mapped, close. With the tc datapath that is the pinned map; with the
raw-socket datapath it is a `SharedTable`, a file in the daemon's state directory
(tmpfs) that every process of the daemon maps. The structs are the same
(`transparent_md.datapath.layout`), so neither side knows which datapath runs.

A shared table is one file: a header page, then the entries. An array table holds its
values back to back (so `mapped()` reads slots exactly as it reads the BPF slot map); a
hash table holds buckets of (state, key, value), probed linearly from the CRC-32 of the
key. Readers take no lock; writers take the table's thread lock and an flock, so the
daemon's threads and a CLI in another process never interleave their writes. A writer
fills a bucket before marking it used, so a reader never matches half a key.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import mmap
import os
import struct
import threading
import zlib
from contextlib import contextmanager, suppress
from pathlib import Path

from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.names import DaemonNames

MAGIC = b"TMDTBL1\0"
# Entries start one page in, so an array's values can be mapped on their own.
HEADER_BYTES = mmap.PAGESIZE
_HEADER = struct.Struct("=8sIIIII")  # magic, kind, key size, value size, capacity, entry size
KIND_ARRAY, KIND_HASH = 0, 1
_EMPTY, _USED, _GONE = 0, 1, 2
_STATE = struct.Struct("=I")
# Hash tables get twice the buckets of their entry limit: probes stay short.
HASH_SLACK = 2
# The raw datapath's tables: (kind, entries) by map name, the limits of bpf/include/tmd_maps.h.
RAW_TABLES: dict[str, tuple[int, int]] = {
    layout.MAP_CONFIG: (KIND_ARRAY, 1),
    layout.MAP_PORTS: (KIND_HASH, 16384),
    layout.MAP_ARP: (KIND_HASH, 16384),
    layout.MAP_BY_GUEST: (KIND_HASH, layout.MAX_SLOTS),
    layout.MAP_SLOTS: (KIND_ARRAY, layout.MAX_SLOTS),
    layout.MAP_NEXT_SLOT: (KIND_ARRAY, 1),
    layout.MAP_MAC_LOCKS: (KIND_HASH, 65536),
    layout.MAP_PORT_USAGE: (KIND_HASH, 16384),
    layout.MAP_PORT_RELEASED: (KIND_HASH, 16384),
    layout.MAP_EVENTS: (KIND_ARRAY, len(layout.Event)),
    layout.MAP_DROPS: (KIND_ARRAY, len(layout.Drop)),
}


def _round4(size: int) -> int:
    return (size + 3) & ~3


class SharedTable:
    """A BpfMap look-alike over a shared file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            head = os.pread(self.fd, _HEADER.size, 0)
            magic, self.kind, self.key_size, self.value_size, self.capacity, self.entry_size = \
                _HEADER.unpack(head)
            if magic != MAGIC:
                raise ValueError(f"{self.path} is not a transparent-md table")
            self._mm = mmap.mmap(self.fd, HEADER_BYTES + self.capacity * self.entry_size)
        except BaseException:
            os.close(self.fd)
            raise
        self._key_off = _STATE.size
        self._value_off = _STATE.size + _round4(self.key_size)
        self._lock = threading.RLock()

    @classmethod
    def create(cls, path: str | Path, kind: int, key_type: type, value_type: type,
               entries: int) -> SharedTable:
        """A new, zeroed table (an existing file at `path` is replaced)."""
        key_size, value_size = ctypes.sizeof(key_type), ctypes.sizeof(value_type)
        if kind == KIND_ARRAY:
            capacity, entry = entries, value_size
        else:
            capacity, entry = entries * HASH_SLACK, _STATE.size + _round4(key_size) + \
                _round4(value_size)
        path = Path(path)
        partial = path.with_suffix(".new")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, HEADER_BYTES + capacity * entry)
            os.pwrite(fd, _HEADER.pack(MAGIC, kind, key_size, value_size, capacity, entry), 0)
        finally:
            os.close(fd)
        os.replace(partial, path)
        return cls(path)

    # -- locking ----------------------------------------------------------------------
    @contextmanager
    def writing(self):
        """Hold the table for a read-modify-write (reentrant within this thread)."""
        with self._lock:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    # -- arrays -----------------------------------------------------------------------
    def _array_offset(self, key: ctypes._CData) -> int | None:
        index = key.value if hasattr(key, "value") else int.from_bytes(bytes(key), "little")
        if not 0 <= index < self.capacity:
            return None
        return HEADER_BYTES + index * self.entry_size

    # -- hashes -----------------------------------------------------------------------
    def _probe(self, raw_key: bytes) -> tuple[int | None, int | None]:
        """(offset of the bucket holding raw_key or None, offset of the first free one)."""
        mm, size = self._mm, self.entry_size
        start = zlib.crc32(raw_key) % self.capacity
        free = None
        key_end = self._key_off + self.key_size
        for step in range(self.capacity):
            off = HEADER_BYTES + ((start + step) % self.capacity) * size
            state = _STATE.unpack_from(mm, off)[0]
            if state == _EMPTY:
                return None, free if free is not None else off
            if state == _GONE:
                if free is None:
                    free = off
                continue
            if mm[off + self._key_off:off + key_end] == raw_key:
                return off, free
        return None, free

    # -- the BpfMap calls ---------------------------------------------------------------
    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        if self.kind == KIND_ARRAY:
            off = self._array_offset(key)
        else:
            off, _ = self._probe(bytes(key))
            if off is not None:
                off += self._value_off
        if off is None:
            return False
        ctypes.memmove(ctypes.addressof(value), self._mm[off:off + self.value_size],
                       self.value_size)
        return True

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = 0) -> None:
        raw_value = bytes(value)[:self.value_size]
        with self.writing():
            if self.kind == KIND_ARRAY:
                off = self._array_offset(key)
                if off is None:
                    raise OSError(7, f"{self.path.name}: index out of range")  # E2BIG
                self._mm[off:off + self.value_size] = raw_value
                return
            raw_key = bytes(key)[:self.key_size]
            found, free = self._probe(raw_key)
            if found is not None:
                self._mm[found + self._value_off:found + self._value_off + self.value_size] = \
                    raw_value
                return
            if free is None:
                raise OSError(7, f"{self.path.name}: table full")  # E2BIG, as a full map
            self._mm[free + self._key_off:free + self._key_off + self.key_size] = raw_key
            self._mm[free + self._value_off:free + self._value_off + self.value_size] = \
                raw_value
            _STATE.pack_into(self._mm, free, _USED)  # last: readers match only whole keys

    def insert(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        """Add `key` only if absent (BPF_NOEXIST); False when it was there."""
        with self.writing():
            if self._probe(bytes(key)[:self.key_size])[0] is not None:
                return False
            self.update(key, value)
            return True

    def delete(self, key: ctypes._CData) -> bool:
        if self.kind == KIND_ARRAY:
            return False  # array entries cannot be deleted, as with a BPF array
        with self.writing():
            found, _ = self._probe(bytes(key)[:self.key_size])
            if found is None:
                return False
            _STATE.pack_into(self._mm, found, _GONE)
            return True

    def _used_offsets(self) -> list[int]:
        if self.kind == KIND_ARRAY:
            return [HEADER_BYTES + i * self.entry_size for i in range(self.capacity)]
        states = memoryview(self._mm)[HEADER_BYTES:].cast("I")[::self.entry_size // 4]
        try:
            # compress() skips the empty buckets in C; only the others are looked at.
            used = [i for i in itertools.compress(range(self.capacity), states)
                    if states[i] == _USED]
        finally:
            states.release()
        return [HEADER_BYTES + i * self.entry_size for i in used]

    def keys(self, key_type: type) -> list:
        if self.kind == KIND_ARRAY:
            return [ctypes.c_uint32(i) for i in range(self.capacity)]
        return [key_type.from_buffer_copy(self._mm[off + self._key_off:
                                                   off + self._key_off + self.key_size])
                for off in self._used_offsets()]

    def items(self, key_type: type, value_type: type) -> list[tuple]:
        pairs = []
        for key in self.keys(key_type):
            value = value_type()
            if self.lookup(key, value):
                pairs.append((key, value))
        return pairs

    def lookup_percpu_u64(self, index: int) -> list[int]:
        """A counter: one value (the raw datapath counts in one thread)."""
        value = ctypes.c_uint64()
        self.lookup(ctypes.c_uint32(index), value)
        return [value.value]

    def add_u64(self, index: int, amount: int = 1) -> None:
        """Add to a u64 entry of an array (a counter), from the datapath's one writer."""
        off = HEADER_BYTES + index * self.entry_size
        struct.pack_into("=Q", self._mm, off, struct.unpack_from("=Q", self._mm, off)[0] + amount)

    def mapped(self, value_type: type, count: int) -> mmap.mmap:
        return mmap.mmap(self.fd, ctypes.sizeof(value_type) * count, mmap.MAP_SHARED,
                         mmap.PROT_READ, offset=HEADER_BYTES)

    def close(self) -> None:
        if self.fd >= 0:
            with suppress(BufferError):  # a view of it is still held: the GC unmaps it
                self._mm.close()
            os.close(self.fd)
        self.fd = -1


def is_shared_table(path: str | Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:  # a BPF pin cannot be read as a file
        return False


def open_table(directory: str | Path, name: str) -> BpfMap | SharedTable:
    """Map `name` of the datapath whose tables are in `directory` (pins or shared files)."""
    path = Path(directory) / name
    if is_shared_table(path):
        return SharedTable(path)
    return BpfMap.from_pin(str(path))


def raw_directory(names: DaemonNames) -> Path:
    """Where the raw datapath keeps its tables: the daemon's state directory (tmpfs)."""
    return names.state_dir / "tables"


def directory_of(names: DaemonNames) -> Path:
    """The running daemon's tables: the raw datapath's files if it runs, else the pins."""
    raw = raw_directory(names)
    return raw if is_shared_table(raw / layout.MAP_SLOTS) else names.pin_dir


def create_raw_tables(directory: Path) -> dict[str, SharedTable]:
    """Every table of the raw datapath, new and empty, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {name: SharedTable.create(directory / name, kind, *layout.MAP_TYPES[name], entries)
            for name, (kind, entries) in RAW_TABLES.items()}


def remove_raw_tables(directory: Path) -> None:
    for name in RAW_TABLES:
        for path in (directory / name, (directory / name).with_suffix(".new")):
            path.unlink(missing_ok=True)
    with suppress(OSError):
        directory.rmdir()
