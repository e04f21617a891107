"""The import rules hold (runtime code never imports cli or lab; `instance list` stays
light), and the checker that enforces them does see lazy, relative and dynamic imports."""

from __future__ import annotations

from pathlib import Path

from transparent_md.lab import importcheck
from transparent_md.lab.importcheck import (
    PACKAGE,
    PACKAGE_DIR,
    RUNTIME_PARTS,
    light_command_violations,
    runtime_import_violations,
    runtime_sources,
)

# A runtime module that breaks the rule three ways, each hidden from a top-level grep.
OFFENDER = """\
import json


def later():
    from ..lab import netns  # relative, inside a function
    return netns


def dynamic():
    import importlib
    return importlib.import_module("transparent_md.cli.main")


from transparent_md import cli  # the package itself, after code
"""
ALLOWED = """\
from transparent_md.errors import UserError
from . import sibling
"""


def test_runtime_packages_do_not_import_cli_or_lab():
    assert [str(v) for v in runtime_import_violations()] == []


def test_every_runtime_part_exists_so_the_check_is_not_vacuous():
    for part in RUNTIME_PARTS:
        assert (PACKAGE_DIR / part).is_dir() or (PACKAGE_DIR / f"{part}.py").is_file(), part
    sources = list(runtime_sources())
    assert PACKAGE_DIR / "store" / "__init__.py" in sources
    assert PACKAGE_DIR / "errors.py" in sources
    assert not [p for p in sources if "cli" in p.parts or "lab" in p.parts]


def test_checker_finds_lazy_relative_and_dynamic_imports(tmp_path: Path):
    root = tmp_path / PACKAGE
    (root / "store").mkdir(parents=True)
    (root / "store" / "__init__.py").write_text(ALLOWED)
    (root / "store" / "offender.py").write_text(OFFENDER)
    found = runtime_import_violations(root)
    lines = sorted(int(v.where.rsplit(":", 1)[1]) for v in found)
    assert lines == [5, 11, 14], [str(v) for v in found]
    assert all("store/offender.py" in v.where for v in found)
    assert "transparent_md.store.offender imports transparent_md.lab" in str(found[0])


def test_instance_list_does_not_load_netlink_asyncio_bcc_or_the_lab():
    assert [str(v) for v in light_command_violations()] == []


def test_probe_sees_what_a_command_loads():
    """The light-command check can fail: `--help` loads every verb, hence the lab."""
    code, modules = importcheck.modules_loaded_by(["dhcp-option", "--help"])
    assert code == 0
    assert "transparent_md.cli.dhcp_option" in modules
    assert "transparent_md.cli.instance" not in modules
