"""The C <-> Python contract: layout.py is compared with what bcc generated from the C.

The checker runs in-process on ctypes classes (no root); the real compile is checked
to pass; and a daemon run from a copy of the tree whose layout.py has two fields
swapped refuses to start, naming the field.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from enum import IntEnum
from pathlib import Path

import pytest

from transparent_md.datapath import contract, layout
from transparent_md.lab.hypervisor import Hypervisor
from transparent_md.lab.netns import Topology

REPO = Path(__file__).resolve().parents[2]


class _Table:
    """What the checker reads of a bcc table."""

    def __init__(self, key: type, leaf: type, max_entries: int = 1) -> None:
        self.Key, self.Leaf, self.max_entries = key, leaf, max_entries


class GeneratedSlot(ctypes.Structure):
    """Stands for bcc's class for struct tmd_slot: same fields as layout.Slot."""

    _fields_ = list(layout.Slot._fields_)


class SwappedSlot(ctypes.Structure):
    """layout.Slot with ip and ifindex swapped: same size, wrong offsets."""

    _fields_ = [layout.Slot._fields_[1], layout.Slot._fields_[0], *layout.Slot._fields_[2:]]


class ShortSlot(ctypes.Structure):
    _fields_ = list(layout.Slot._fields_[:-1])


class Two(IntEnum):
    A = 0
    B = 1


def check_slot(mirrored: type) -> None:
    contract.check(lambda name: _Table(ctypes.c_int, GeneratedSlot),
                   types={layout.MAP_SLOTS: (ctypes.c_uint32, mirrored)}, counters={})


def test_matching_structs_pass():
    check_slot(layout.Slot)


def test_a_moved_field_is_named_with_its_map_and_struct():
    with pytest.raises(contract.ContractError) as err:
        check_slot(SwappedSlot)
    message = str(err.value)
    assert "map tmd_slots value" in message and "struct GeneratedSlot" in message
    assert "layout.SwappedSlot" in message and "field 'ifindex'" in message
    assert "offset 0 size 4 in C but offset 4 size 4 in Python" in message
    assert "\n" not in message


def test_a_missing_field_is_named():
    with pytest.raises(contract.ContractError, match="field 'ip6' is missing"):
        check_slot(ShortSlot)


def test_a_scalar_of_the_wrong_size_is_refused():
    with pytest.raises(contract.ContractError, match="map tmd_slots key .* size 4 in C but 8"):
        contract.check(lambda name: _Table(ctypes.c_int, GeneratedSlot),
                       types={layout.MAP_SLOTS: (ctypes.c_uint64, layout.Slot)}, counters={})


def test_a_counter_enum_must_match_the_maps_length():
    contract.compare_counters("tmd_drops", 2, Two)
    with pytest.raises(contract.ContractError, match="tmd_drops has 3 entries .* names 2"):
        contract.compare_counters("tmd_drops", 3, Two)


@pytest.mark.netns  # compiling with bcc needs root
def test_the_real_compile_matches_layout():
    from transparent_md.datapath import programs

    loaded = programs.load_programs()
    try:
        contract.check(loaded.table)
        with pytest.raises(contract.ContractError, match="field 'ifindex'"):
            contract.check(loaded.table, types={layout.MAP_SLOTS: (ctypes.c_uint32, SwappedSlot)},
                           counters={})
    finally:
        loaded.bpf.cleanup()


def broken_copy(root: Path) -> Path:
    """transparent_md/ and bpf/ copied, with Slot's ifindex and ip swapped in layout.py."""
    shutil.copytree(REPO / "transparent_md", root / "transparent_md",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bpf", root / "bpf")
    layout_py = root / "transparent_md" / "datapath" / "layout.py"
    text = layout_py.read_text()
    ifindex = '        ("ifindex", ctypes.c_uint32),  # 0: free\n'
    ip = '        ("ip", ctypes.c_uint32),\n'
    slot_fields = ifindex + ip
    assert text.count(slot_fields) == 1, "layout.Slot changed: update this test's edit"
    layout_py.write_text(text.replace(slot_fields, ip + ifindex))
    return root


@pytest.mark.netns
def test_daemon_with_a_wrong_layout_refuses_to_start_naming_the_field(tmp_path):
    copy = broken_copy(tmp_path / "tree")
    with Topology() as topo:
        hv = Hypervisor(topo)
        hv.bridge("br0")
        result = topo.sh(hv.ns, [
            "env", f"PYTHONPATH={copy}", sys.executable, "-m", "transparent_md", "run",
            "--bridge", "br0", "--store", str(tmp_path / "store.db"),
        ], timeout=120, cwd=tmp_path)  # not the repo: `python -m` puts the cwd first
        # Nothing was left attached or created by the refused start.
        links = topo.sh(hv.ns, ["ip", "-br", "link"]).stdout
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "map tmd_slots value" in last and "field 'ifindex'" in last, result.stderr
    assert "tmd-md" not in links


def test_the_copy_really_runs_from_the_copy(tmp_path):
    """Guards the test above: the copy must win over the repo (the cwd, and the editable
    install's finder), or the daemon would run the unbroken layout.py."""
    copy = broken_copy(tmp_path / "tree")
    found = subprocess.run(
        [sys.executable, "-c", "import transparent_md.datapath.layout as m; print(m.__file__)"],
        env={"PYTHONPATH": str(copy)}, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert found.stdout.strip().startswith(str(copy))
