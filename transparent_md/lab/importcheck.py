"""The import rules, checked: `python -m transparent_md.lab.importcheck` exits 0 or 1.

Two rules keep the daemon's install small and its start-up cheap:

1. Nothing under the runtime packages (what a hypervisor runs) imports the command
   line or the lab. Checked statically with `ast` over every source file, including
   imports inside functions, so a lazy import cannot slip through untested.
2. A light command (`instance list`) does not load the daemon's heavy dependencies
   (netlink, asyncio, bcc, the lab). Checked by running it in a fresh interpreter and
   reading `sys.modules`.

Each violation is printed as one line naming the file and line (rule 1) or the module
(rule 2).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "transparent_md"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# What does not run on a hypervisor's daemon path: the command line, the lab, `-m` glue.
NOT_RUNTIME = frozenset({"cli", "lab", "__main__", "__init__", "__pycache__"})
# What runs on a hypervisor: every other package (directory) and module under PACKAGE,
# so a new one is checked without anyone remembering to list it.
RUNTIME_PARTS = tuple(sorted(
    path.stem for path in PACKAGE_DIR.iterdir()
    if path.stem not in NOT_RUNTIME and (path.is_dir() or path.suffix == ".py")))
# What runtime code must never import: argument parsing and the namespace lab.
FORBIDDEN_PREFIXES = (f"{PACKAGE}.cli", f"{PACKAGE}.lab")
# Calls that import a module named by a string, checked like import statements.
DYNAMIC_IMPORTERS = ("import_module", "__import__")

# A light command and what it must not load: each costs tens of milliseconds
# (pyroute2 alone ~170 ms) for a command that only reads SQLite.
LIGHT_COMMAND = ("instance", "list")
HEAVY_MODULES = ("pyroute2", "asyncio", "bcc", "uvloop", f"{PACKAGE}.lab",
                 f"{PACKAGE}.daemon", f"{PACKAGE}.datapath")
# Bound on the light command's run: it takes well under a second.
LIGHT_COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class Violation:
    where: str   # "path:line" or the command line
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def runtime_sources(root: Path = PACKAGE_DIR) -> Iterator[Path]:
    """Every .py file of the runtime packages and modules, in a stable order."""
    for part in RUNTIME_PARTS:
        package, module = root / part, root / f"{part}.py"
        if package.is_dir():
            yield from sorted(package.rglob("*.py"))
        if module.is_file():
            yield module


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    """Dotted name of a source file under `root` (the package directory)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an ImportFrom names, with relative imports resolved against `importer`."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    # `from . import x` in a package's __init__ means the package itself.
    drop = node.level - 1 if is_package else node.level
    base = base[:len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(tree: ast.AST, importer: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import in the tree, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            yield node.lineno, module
            # `from transparent_md import cli` imports the package `cli` itself.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (name in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)):
                yield node.lineno, first.value


def _forbidden(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES)


def runtime_import_violations(root: Path = PACKAGE_DIR) -> list[Violation]:
    """Rule 1: runtime code importing cli or lab, one Violation per import."""
    found = []
    for path in runtime_sources(root):
        importer = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        seen = set()
        # ast.walk goes breadth first; sorted, the report follows the file top to bottom.
        for line, name in sorted(imported_names(tree, importer, path.name == "__init__.py")):
            if _forbidden(name) and line not in seen:
                seen.add(line)
                found.append(Violation(f"{path}:{line}",
                                       f"{importer} imports {name} (runtime code must not "
                                       "import transparent_md.cli or transparent_md.lab)"))
    return found


# Run in a fresh interpreter: the command through the real entry point, then the
# names of every loaded module as JSON on the last line of stdout.
_PROBE = """\
import contextlib, io, json, sys
from transparent_md.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def modules_loaded_by(argv: list[str]) -> tuple[int, list[str]]:
    """(exit code, loaded module names) of `transparent-md <argv>` in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                         text=True, timeout=LIGHT_COMMAND_TIMEOUT_S,
                         cwd=PACKAGE_DIR.parent)
    if res.returncode != 0:
        raise RuntimeError(f"transparent-md {' '.join(argv)} failed: {res.stderr.strip()}")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    return report["exit"], report["modules"]


def light_command_violations() -> list[Violation]:
    """Rule 2: `instance list` on an empty store loads none of HEAVY_MODULES."""
    with tempfile.TemporaryDirectory(prefix="tmd-importcheck-") as tmp:
        argv = [*LIGHT_COMMAND, "--store", str(Path(tmp) / "instances.db")]
        code, modules = modules_loaded_by(argv)
    where = "transparent-md " + " ".join(LIGHT_COMMAND)
    found = [] if code == 0 else [Violation(where, f"exited {code}")]
    for heavy in HEAVY_MODULES:
        loaded = [m for m in modules if m == heavy or m.startswith(heavy + ".")]
        if loaded:
            found.append(Violation(where, f"loads {heavy} ({len(loaded)} modules)"))
    return found


def main() -> int:
    violations = runtime_import_violations() + light_command_violations()
    for violation in violations:
        print(violation)
    print(f"import rules: {len(violations)} violation(s)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
