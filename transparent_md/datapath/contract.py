"""The C <-> Python contract, checked after every compile instead of trusted.

layout.py mirrors the structs of bpf/include/tmd_maps.h by hand. bcc generates its own
ctypes classes for every map's key and value from the compiled C; comparing the two
(size, and each field's offset and size by name) turns a forgotten edit on one side
into a one-line error naming the map, the struct and the field, before anything reads
or writes a map with the wrong layout.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any

from transparent_md.datapath import layout
from transparent_md.errors import UserError

# bcc names the padding it makes explicit like this; the C has no such field.
_BCC_PADDING_PREFIX = "__pad"


class ContractError(UserError):
    """layout.py and the compiled C disagree; the message names the first difference."""


# compile_child's exit code for a ContractError, so the daemon raises it again as one.
EXIT_CODE = 3


def _type_name(ctype: type) -> str:
    return f"struct {ctype.__name__}" if issubclass(ctype, ctypes.Structure) else ctype.__name__


def _fields(ctype: type) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of a ctypes structure's fields."""
    return {name: (getattr(ctype, name).offset, getattr(ctype, name).size)
            for name, *_ in ctype._fields_ if not name.startswith(_BCC_PADDING_PREFIX)}


def compare_types(map_name: str, role: str, generated: type, mirrored: type) -> None:
    """Raise ContractError unless `mirrored` (layout.py) lays out like `generated` (bcc)."""
    where = (f"map {map_name} {role} ({_type_name(generated)} in C, "
             f"layout.{mirrored.__name__} in Python)")
    if issubclass(generated, ctypes.Structure) and issubclass(mirrored, ctypes.Structure):
        c_fields, py_fields = _fields(generated), _fields(mirrored)
        for name, (c_off, c_size) in c_fields.items():
            if name not in py_fields:
                raise ContractError(f"layout.py does not match the BPF C: {where}: "
                                    f"field '{name}' is missing in Python")
            py_off, py_size = py_fields[name]
            if (py_off, py_size) != (c_off, c_size):
                raise ContractError(
                    f"layout.py does not match the BPF C: {where}: field '{name}' is at "
                    f"offset {c_off} size {c_size} in C but offset {py_off} size {py_size} "
                    "in Python")
        for name in py_fields.keys() - c_fields.keys():
            raise ContractError(f"layout.py does not match the BPF C: {where}: "
                                f"field '{name}' does not exist in C")
    if ctypes.sizeof(generated) != ctypes.sizeof(mirrored):
        raise ContractError(f"layout.py does not match the BPF C: {where}: size "
                            f"{ctypes.sizeof(generated)} in C but {ctypes.sizeof(mirrored)} "
                            "in Python")


def compare_counters(map_name: str, max_entries: int, names: type[IntEnum]) -> None:
    """A counter map has exactly one entry per enum member (its *_MAX)."""
    if max_entries != len(names):
        raise ContractError(
            f"layout.py does not match the BPF C: map {map_name} has {max_entries} entries "
            f"(its enum's _MAX) but layout.{names.__name__} names {len(names)}")
    values = sorted(member.value for member in names)
    if values != list(range(len(names))):
        raise ContractError(f"layout.{names.__name__} is not numbered 0..{len(names) - 1} "
                            f"like its C enum")


def check(table: Callable[[str], Any],
          types: Mapping[str, tuple[type, type]] = layout.MAP_TYPES,
          counters: Mapping[str, type[IntEnum]] = layout.COUNTER_ENUMS) -> None:
    """Check every map's key and value, and every counter map's length.

    `table(name)` returns bcc's table object (with .Key, .Leaf, .max_entries).
    """
    for map_name, (key_type, value_type) in types.items():
        generated = table(map_name)
        compare_types(map_name, "key", generated.Key, key_type)
        # Per-CPU maps: bcc's Leaf is one element per CPU; sLeaf is the element.
        leaf = getattr(generated, "sLeaf", generated.Leaf)
        compare_types(map_name, "value", leaf, value_type)
    for map_name, names in counters.items():
        compare_counters(map_name, table(map_name).max_entries, names)
