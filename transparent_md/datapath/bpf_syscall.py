"""The few bpf(2) commands user space needs without bcc: pin, open a pin, map access.

The responder reads the slot map once per connection; going through ctypes and the raw
syscall keeps bcc (and its compiler) out of the request path and out of worker processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_SYS_BPF = 321  # x86_64 syscall number of bpf(2)

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7

BPF_ANY = 0

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


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


# The kernel accepts attribute sizes up to its own union; 128 bytes covers these commands.
_ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    ctypes.memmove(buf, ctypes.addressof(attr), ctypes.sizeof(attr))
    ret = _libc.syscall(_SYS_BPF, cmd, buf, _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
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


class PinnedMap:
    """A map opened from its pin; lookups fill a caller-provided ctypes value."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = obj_get(path)

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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
