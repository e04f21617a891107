"""Whether the lab is here, asked before `demo` or `bench` start building.

The lab (`transparent_md/lab`: the demo topology, the bench, the attacks) is left out of
the runtime wheel, the install script and the Debian package: a hypervisor carries only
the daemon. It lives in a clone's editable install (`scripts/setup`), with its own
dependencies from the `lab` extra. Without it the user gets one line saying how to get
it instead of an ImportError traceback; `--help` works either way, so nothing here
imports the lab.
"""

from __future__ import annotations

import importlib.util

from transparent_md.errors import UserError

LAB_PACKAGE = "transparent_md.lab"
# Top-level modules the `lab` extra in pyproject.toml provides.
LAB_MODULES = ("aiohttp", "matplotlib")
INSTALL_HINT = "pip install -e '.[lab]' in a clone of the repository"
# One line for an install (package, scripts/install, a wheel) that has no lab at all.
GET_THE_LAB = ("{command} is part of the lab, which this install leaves out: clone the "
               "repository, run ./scripts/setup in it, then .venv/bin/transparent-md "
               "{command}")


def _importable(name: str) -> bool:
    """Found without importing it (and without a traceback from a refusing finder)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the module outright
        return False


def missing_lab_modules() -> list[str]:
    """The lab's dependencies this interpreter cannot import."""
    return [name for name in LAB_MODULES if not _importable(name)]


def require_lab_extra(command: str) -> None:
    """Raise a one-line UserError saying how to get what `command` lacks."""
    if not _importable(LAB_PACKAGE):
        raise UserError(GET_THE_LAB.format(command=command))
    missing = missing_lab_modules()
    if missing:
        raise UserError(f"{command} needs the lab extra (missing {', '.join(missing)}): "
                        f"{INSTALL_HINT}")
