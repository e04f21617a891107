"""Whether the `lab` extra is installed, asked before `demo` or `bench` start building.

The lab's own dependencies (the comparison servers, the charts) are an optional extra so
a hypervisor's install carries only the daemon's. Without them the user gets one line
naming what to install instead of an ImportError traceback halfway through a run.
"""

from __future__ import annotations

import importlib.util

from transparent_md.errors import UserError

# Top-level modules the `lab` extra in pyproject.toml provides.
LAB_MODULES = ("aiohttp", "matplotlib")
INSTALL_HINT = "pip install 'transparent-md[lab]'"


def missing_lab_modules() -> list[str]:
    """The lab's modules this interpreter cannot import, found without importing them."""
    missing = []
    for name in LAB_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a finder that refuses the module outright
            found = False
        if not found:
            missing.append(name)
    return missing


def require_lab_extra(command: str) -> None:
    """Raise a one-line UserError naming the extra when `command` cannot run."""
    missing = missing_lab_modules()
    if missing:
        raise UserError(f"{command} needs the lab extra (missing {', '.join(missing)}): "
                        f"{INSTALL_HINT}")
