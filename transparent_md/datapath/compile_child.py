"""Child process that compiles the programs, pins them and their maps, and exits.

bcc brings LLVM and clang into the process that uses it (about 200 MB of RSS). Doing
the compile here keeps the long-running daemon small: it only opens the pins.
Usage: python -m transparent_md.datapath.compile_child PIN_DIR [CFLAG ...]
Exit 0 when pinned; otherwise the user-facing message on stderr and exit 2 (missing
headers, no bpf(2): no tc program here) or contract.EXIT_CODE (layout.py disagreeing with
the C, see contract.py: a broken install, which `--datapath auto` must not hide).
"""

from __future__ import annotations

import sys
from pathlib import Path

from transparent_md.datapath import bpf_syscall, bpffs, contract, layout, programs
from transparent_md.errors import UserError


def main(argv: list[str]) -> int:
    pin_dir = Path(argv[0])
    try:
        loaded = programs.load_programs(tuple(argv[1:]))
        # Before anything is pinned: a layout.py that disagrees with the C must never
        # read or write a map (one line naming the map, struct and field).
        contract.check(loaded.table)
        bpffs.pin_maps(pin_dir, {name: loaded.map_fd(name) for name in layout.ALL_MAPS})
        bpf_syscall.obj_pin(loaded.port_fd, str(pin_dir / programs.PORT_PROGRAM))
        bpf_syscall.obj_pin(loaded.md_fd, str(pin_dir / programs.MD_PROGRAM))
    except contract.ContractError as exc:
        print(exc, file=sys.stderr)
        return contract.EXIT_CODE
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"could not pin the BPF programs and maps under {pin_dir}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
