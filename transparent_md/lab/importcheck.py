"""The import rules, checked: `python -m transparent_md.lab.importcheck` exits 0 or 1.

Two rules keep the daemon's install small and its start-up cheap:

1. Nothing under the runtime packages (what a hypervisor runs) imports the command
   line or the lab. Checked statically with `ast` over every source file, including
   imports inside functions, so a lazy import cannot slip through untested.
2. A light command (`instance list`) does not load the daemon's heavy dependencies
   (netlink, asyncio, bcc, the lab). Checked by running it in a fresh interpreter and
   reading `sys.modules`.

Two more keep the package easy to change, one part at a time:

3. The layering (LAYERS, the one place it is written down): a part of the package may
   import its own layer and the layers below, never one above, so each part can be
   read and tested with only what is under it. Every part is in exactly one layer.
4. No import cycle between modules. Imports under `if TYPE_CHECKING:` never run, so
   they cannot make one; they still count for rule 3.

Rules 1, 3 and 4 see lazy, relative and dynamic (`import_module("...")`) imports alike.
Each violation is printed as one line naming the file and line (rules 1 and 3), the
module (rule 2) or the modules of the cycle (rule 4).
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

# Rule 3: the parts of the package (packages and modules directly under it; the package's
# own __init__ is "__init__"), lowest layer first. A part may import parts of its own
# layer and below. A new part must be placed here before the check passes.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Helpers every part may use: errors, names of what a daemon creates, processes,
    # periodic threads, lock files, the version,
    ("__init__", "errors", "names", "process", "periodic", "lockfile",
     # and the hostile-guest limits' one declaration (datapath and responder read it).
     "guest_limits"),
    # The tc programs, their maps and their loader; DHCP option encoding.
    ("datapath", "dhcp"),
    # Who asked: reads the datapath's slot map.
    ("identity",),
    # Instance records, matched against an identity.
    ("store",),
    # Answering guests (responder) and operators (the admin API) from the store.
    ("responder", "api"),
    # VM-manager hooks that write records through the admin API.
    ("integrations",),
    # What `run` starts and stops: datapath, responder and API together.
    ("daemon",),
    # Demo, bench and attack topologies (never imported by the runtime: rule 1).
    ("lab",),
    # The command line, and `python -m transparent_md`.
    ("cli",),
    ("__main__",),
)
ROOT_PART = "__init__"
# Ignored when listing parts: not Python.
NOT_PARTS = frozenset({"__pycache__", "bpf"})

# A light command and what it must not load: each costs tens of milliseconds
# (pyroute2 alone ~170 ms) for a command that only reads SQLite.
LIGHT_COMMAND = ("instance", "list")
HEAVY_MODULES = ("pyroute2", "asyncio", "bcc", "uvloop", f"{PACKAGE}.lab",
                 f"{PACKAGE}.daemon", f"{PACKAGE}.datapath",
                 # start-up cost of every CLI call (issue 26): loaded only when used
                 "yaml", "uuid", "importlib.metadata", "requests", "etcd3gw")
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
        elif (dynamic := _dynamic_import(node)) is not None:
            yield node.lineno, dynamic


def _dynamic_import(node: ast.AST) -> str | None:
    """The module an `import_module("...")` or `__import__("...")` call names, if any."""
    if not (isinstance(node, ast.Call) and node.args):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    if name in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant) and isinstance(
            first.value, str):
        return first.value
    return None


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


def all_sources(root: Path = PACKAGE_DIR) -> Iterator[Path]:
    """Every .py file of the package, runtime or not, in a stable order."""
    return iter(sorted(p for p in root.rglob("*.py")
                       if not NOT_PARTS.intersection(p.relative_to(root).parts)))


def parts_on_disk(root: Path = PACKAGE_DIR) -> set[str]:
    """The parts of the package as it is: its packages and modules, and its __init__."""
    return {p.stem for p in root.iterdir() if p.name not in NOT_PARTS
            and (p.is_dir() and (p / "__init__.py").is_file() or p.suffix == ".py")}


def part_of(module: str) -> str:
    """The part of the package a dotted module name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_PART


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                lines.update(inner.lineno for stmt in node.body for inner in ast.walk(stmt)
                             if hasattr(inner, "lineno"))
    return lines


@dataclass(frozen=True)
class ModuleImport:
    path: Path       # the importing file
    line: int
    importer: str    # dotted module names, both in the package
    imported: str
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


def _resolve(name: str, modules: set[str]) -> str | None:
    """The package's module that importing `name` runs: the longest existing prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def module_imports(root: Path = PACKAGE_DIR) -> list[ModuleImport]:
    """Every import of one of the package's modules by another, at any depth.

    `from pkg import sub` is an import of pkg.sub when that is a module, else of pkg;
    the package's own __init__ is reached only by importing it by name."""
    sources = list(all_sources(root))
    modules = {module_name(p, root) for p in sources}
    found = []
    for path in sources:
        importer = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_lines = _type_checking_lines(tree)
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _absolute(node, importer, is_package)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    names.add((node.lineno, sub if sub in modules else base))
            elif isinstance(node, ast.Import):
                names.update((node.lineno, alias.name) for alias in node.names)
            elif (dynamic := _dynamic_import(node)) is not None:
                names.add((node.lineno, dynamic))
        for line, name in sorted(names):
            target = _resolve(name, modules)
            if target is not None and target != importer:
                found.append(ModuleImport(path, line, importer, target, line in typing_lines))
    return sorted(set(found), key=lambda i: (str(i.path), i.line, i.imported))


def layer_violations(root: Path = PACKAGE_DIR,
                     layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[Violation]:
    """Rule 3: an import of a part in a higher layer, or a part placed in no layer."""
    rank = {part: i for i, layer in enumerate(layers) for part in layer}
    found = [Violation(str(root / part), f"part '{part}' is in no layer: place it in "
                       "LAYERS (transparent_md/lab/importcheck.py)")
             for part in sorted(parts_on_disk(root) - rank.keys())]
    for imp in module_imports(root):
        src, dst = part_of(imp.importer), part_of(imp.imported)
        if src in rank and dst in rank and rank[dst] > rank[src]:
            found.append(Violation(
                f"{imp.path}:{imp.line}",
                f"{imp.importer} imports {imp.imported}: '{src}' (layer {rank[src]}) must not "
                f"import '{dst}' (layer {rank[dst]}), which is above it"))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly
    connected group of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return [_a_cycle_in(graph, group) for group in groups]


def _a_cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, staying in the group."""
    first = min(group)
    paths = {first: [first]}
    queue = [first]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph.get(node, ())):
            if child == first:
                return paths[node] + [first]
            if child in group and child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return sorted(group)  # unreachable for a strongly connected group


def cycle_violations(root: Path = PACKAGE_DIR) -> list[Violation]:
    """Rule 4: modules that import each other, directly or round a circle, at run time."""
    graph: dict[str, set[str]] = {}
    for imp in module_imports(root):
        if not imp.type_only:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    return [Violation("import cycle", " -> ".join(cycle)) for cycle in _cycles(graph)]


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
    from transparent_md.store import open_store

    with tempfile.TemporaryDirectory(prefix="tmd-importcheck-") as tmp:
        store = str(Path(tmp) / "instances.db")
        open_store(store).close()  # `list` refuses a store that does not exist
        code, modules = modules_loaded_by([*LIGHT_COMMAND, "--store", store])
    where = "transparent-md " + " ".join(LIGHT_COMMAND)
    found = [] if code == 0 else [Violation(where, f"exited {code}")]
    for heavy in HEAVY_MODULES:
        loaded = [m for m in modules if m == heavy or m.startswith(heavy + ".")]
        if loaded:
            found.append(Violation(where, f"loads {heavy} ({len(loaded)} modules)"))
    return found


def main() -> int:
    violations = (runtime_import_violations() + layer_violations() + cycle_violations()
                  + light_command_violations())
    for violation in violations:
        print(violation)
    print(f"import rules: {len(violations)} violation(s)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
