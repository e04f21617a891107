"""The few bpf(2) commands user space needs without bcc: pin, open a pin, map access.

The responder reads the slot map once per connection; going through ctypes and the raw
syscall keeps bcc (and its compiler) out of the request path and out of worker processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from pathlib import Path

# bpf(2)'s number differs by architecture (asm/unistd.h of each); the generic table
# (aarch64, riscv64, loongarch64) shares 280.
_SYS_BPF_BY_MACHINE = {
    "x86_64": 321, "i386": 357, "i686": 357, "aarch64": 280, "riscv64": 280,
    "loongarch64": 280, "armv7l": 386, "armv8l": 386, "ppc64le": 361, "ppc64": 361,
    "s390x": 351,
}
_SYS_BPF = _SYS_BPF_BY_MACHINE.get(os.uname().machine)

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_MAP_LOOKUP_BATCH = 24

BPF_ANY = 0
BPF_NOEXIST = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


# The kernel accepts attribute sizes up to its own union; 128 bytes covers these commands.
_ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2) with `attr`; what the kernel writes back (e.g. a test run's verdict, a
    batch's count) is copied into `attr`."""
    if _SYS_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {os.uname().machine}")
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    ctypes.memmove(buf, ctypes.addressof(attr), ctypes.sizeof(attr))
    ret = _libc.syscall(_SYS_BPF, cmd, buf, _ATTR_SIZE)
    err = ctypes.get_errno()
    # Copied back on failure too: a batch lookup reports its count with ENOENT.
    ctypes.memmove(ctypes.addressof(attr), buf, ctypes.sizeof(attr))
    if ret < 0:
        raise OSError(err, os.strerror(err))
    return ret


def obj_pin(fd: int, path: str) -> None:
    raw = path.encode()
    attr = _ObjAttr(pathname=ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value, bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr)


def obj_get(path: str) -> int:
    raw = path.encode()
    attr = _ObjAttr(pathname=ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value)
    return _bpf(BPF_OBJ_GET, attr)


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU, not per online one."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class BpfMap:
    """A map by file descriptor; lookups fill a caller-provided ctypes value."""

    def __init__(self, fd: int, owned: bool = True) -> None:
        self.fd = fd
        self._owned = owned

    @classmethod
    def from_pin(cls, path: str) -> BpfMap:
        return cls(obj_get(path))

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        """Fill `value` from `key`; False when the key is absent."""
        attr = _MapElemAttr(
            map_fd=self.fd, key=ctypes.addressof(key), value=ctypes.addressof(value)
        )
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
        attr = _MapElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(key),
            value=ctypes.addressof(value),
            flags=flags,
        )
        _bpf(BPF_MAP_UPDATE_ELEM, attr)

    def delete(self, key: ctypes._CData) -> bool:
        """Remove `key`; False when it was not there."""
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key))
        try:
            _bpf(BPF_MAP_DELETE_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self, key_type: type) -> list:
        """Every key of a hash map, read before the caller changes anything (deleting
        while walking would restart the walk)."""
        found = []
        previous: ctypes._CData | None = None
        while True:
            following = key_type()
            attr = _MapElemAttr(
                map_fd=self.fd,
                key=ctypes.addressof(previous) if previous is not None else 0,
                value=ctypes.addressof(following),
            )
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return found
                raise
            found.append(following)
            previous = following

    def items(self, key_type: type, value_type: type) -> list[tuple]:
        """(key, value) pairs of a hash map; keys that vanish meanwhile are skipped."""
        pairs = []
        for key in self.keys(key_type):
            value = value_type()
            if self.lookup(key, value):
                pairs.append((key, value))
        return pairs

    def array_values(self, value_type: type, count: int,
                     into: tuple[ctypes.Array, ctypes.Array] | None = None) -> ctypes.Array:
        """Entries 0..count-1 of an array map in a few BPF_MAP_LOOKUP_BATCH calls (one
        syscall per element would cost a second per 65,536-entry scan).

        `into` is a (values, keys) pair of buffers from an earlier call to fill again: a
        caller scanning every second then never allocates megabytes anew (glibc keeps
        such freed blocks on the heap, and the process's RSS with them)."""
        values, keys = into or ((value_type * count)(), (ctypes.c_uint32 * count)())
        if len(values) < count or len(keys) < count:
            raise ValueError("array_values: the buffers are smaller than count")
        start, done = ctypes.c_uint32(0), 0
        cursor = ctypes.c_uint32(0)
        while done < count:
            attr = _BatchAttr(
                in_batch=ctypes.addressof(start) if done else 0,
                out_batch=ctypes.addressof(cursor),
                keys=ctypes.addressof(keys) + done * ctypes.sizeof(ctypes.c_uint32),
                values=ctypes.addressof(values) + done * ctypes.sizeof(value_type),
                count=count - done, map_fd=self.fd,
            )
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: the map's end was reached
                    raise
                break
            finally:
                done += attr.count
            start.value = cursor.value
        return values

    def lookup_percpu_u64(self, index: int) -> list[int]:
        """One u64 per possible CPU from a per-CPU array (zeros when absent)."""
        values = (ctypes.c_uint64 * possible_cpus())()
        self.lookup(ctypes.c_uint32(index), values)
        return list(values)

    def mapped(self, value_type: type, count: int) -> mmap.mmap:
        """Read-only mapping of an array map created with BPF_F_MMAPABLE, `count` entries
        of `value_type`: reading it costs no system call and copies nothing."""
        return mmap.mmap(self.fd, ctypes.sizeof(value_type) * count, mmap.MAP_SHARED,
                         mmap.PROT_READ)

    def close(self) -> None:
        if self.fd >= 0 and self._owned:
            os.close(self.fd)
        self.fd = -1


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
    ]


BPF_PROG_TEST_RUN = 10
# Room for a rewritten frame: programs here never grow a packet beyond an MTU frame.
_TEST_RUN_OUT = 16384


def prog_test_run(prog_fd: int, packet: bytes) -> tuple[int, bytes]:
    """Run a tc program on one frame in the kernel (BPF_PROG_TEST_RUN).

    Returns (verdict, frame as the program left it). A redirect verdict is only
    reported, never carried out, so this is safe anywhere.
    """
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(_TEST_RUN_OUT)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_size_out=_TEST_RUN_OUT,
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=1,
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, data_out.raw[: attr.data_size_out]


BPF_OBJ_GET_INFO_BY_FD = 15


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def prog_id(fd: int) -> int:
    """The kernel's id of the program open on `fd` (what `tc filter show` reports as id)."""
    # struct bpf_prog_info starts with `__u32 type; __u32 id;`: 8 bytes are enough.
    info = (ctypes.c_uint32 * 2)()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info[1]
