"""The import rules hold (runtime code never imports cli or lab; `instance list` stays
light; no part imports a layer above it; no import cycle), and the checker that enforces
them does see lazy, relative and dynamic imports."""

from __future__ import annotations

from pathlib import Path

from transparent_md.lab import importcheck
from transparent_md.lab.importcheck import (
    LAYERS,
    PACKAGE,
    PACKAGE_DIR,
    RUNTIME_PARTS,
    cycle_violations,
    layer_violations,
    light_command_violations,
    parts_on_disk,
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


# -- the layering and cycles ------------------------------------------------------------
def test_no_part_imports_a_layer_above_it():
    assert [str(v) for v in layer_violations()] == []


def test_no_import_cycle():
    assert [str(v) for v in cycle_violations()] == []


def test_every_part_is_in_exactly_one_layer():
    placed = [part for layer in LAYERS for part in layer]
    assert len(placed) == len(set(placed)), placed
    assert set(placed) == parts_on_disk()


def test_the_datapath_is_below_what_reads_it():
    """The arrow issue 22 found (datapath importing identity's cache lifetime) stays
    turned the right way: identity reads the datapath's maps, never the reverse."""
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    assert rank["datapath"] < rank["identity"] < rank["store"] < rank["responder"] \
        < rank["daemon"] < rank["cli"]


# A small package for the checker: three layers, one arrow up hidden in a function, one
# relative, one only for type checking (still an arrow up), and a cycle at run time.
TOY_LAYERS = (("__init__", "base"), ("low",), ("high",))
TOY_FILES = {
    "__init__.py": "",
    "base.py": "",
    "low/__init__.py": "",
    "low/a.py": "from typing import TYPE_CHECKING\n"
                "from toypkg.low import b\n"
                "if TYPE_CHECKING:\n"
                "    from toypkg.high import view\n",
    "low/b.py": "def later():\n"
                "    from . import a\n"
                "    from ..high import view\n"
                "    return a, view\n",
    "high/__init__.py": "",
    "high/view.py": "from toypkg import base\nfrom toypkg.low import a\n",
    "stray.py": "",
}


def toy_package(tmp_path: Path, files: dict[str, str] = TOY_FILES) -> Path:
    root = tmp_path / "toypkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_finds_arrows_up_lazy_relative_and_type_only(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(importcheck, "PACKAGE", "toypkg")
    root = toy_package(tmp_path)
    found = [str(v) for v in layer_violations(root, TOY_LAYERS)]
    assert found[0] == (f"{root / 'stray'}: part 'stray' is in no layer: place it in "
                        "LAYERS (transparent_md/lab/importcheck.py)")
    arrows = sorted(v.split("/toypkg/", 1)[1].split(": ", 1)[0] for v in found[1:])
    assert arrows == ["low/a.py:4", "low/b.py:3"], found
    assert "'low' (layer 1) must not import 'high' (layer 2)" in found[1]


def test_checker_finds_run_time_cycles_only(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(importcheck, "PACKAGE", "toypkg")
    root = toy_package(tmp_path)
    # a -> b, and b's lazy import of view, which imports a: one circle.
    assert [str(v) for v in cycle_violations(root)] == [
        "import cycle: toypkg.high.view -> toypkg.low.a -> toypkg.low.b -> toypkg.high.view"]
    # The type-only arrow from a to view closes no cycle although view imports a.
    files = dict(TOY_FILES, **{"low/b.py": ""})
    assert cycle_violations(toy_package(tmp_path / "again", files)) == []


def test_the_responders_modules_import_each_other_in_no_circle_even_for_type_checking():
    """Issue 22: protocol.py and server.py imported each other (for type checking only)
    over ResponderState; it lives in a module of its own, so none of the responder's
    modules needs another that needs it back, not even to read its types."""
    responder = f"{PACKAGE}.responder."
    graph: dict[str, set[str]] = {}
    for found in importcheck.module_imports():
        if found.importer.startswith(responder) and found.imported.startswith(responder):
            graph.setdefault(found.importer, set()).add(found.imported)
    assert f"{responder}protocol" in graph and f"{responder}server" in graph
    assert importcheck._cycles(graph) == []
