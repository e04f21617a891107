"""Without the `lab` extra, `bench` and `demo` say in one line what to install; without
the `etcd` extra, so does an `etcd://` store.

The interpreter is made to lack a lab module by a sitecustomize on PYTHONPATH that
refuses to import it, exactly as an install without the extra would fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.cli.lab_extra import INSTALL_HINT

# Loaded by every interpreter started with this directory on PYTHONPATH.
REFUSER = """\
import sys

REFUSED = {refused!r}


class RefuseLabModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, RefuseLabModules())
"""
# Bound only: each command stops before building anything.
COMMAND_TIMEOUT_S = 60


def run_without(tmp_path: Path, refused: set[str], *argv: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(REFUSER.format(refused=sorted(refused)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv], env=env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


@pytest.mark.parametrize("argv", [("bench", "--quick"), ("demo",)])
def test_missing_aiohttp_is_one_line_naming_the_extra(tmp_path, argv):
    res = run_without(tmp_path, {"aiohttp"}, *argv)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert INSTALL_HINT in res.stderr and "aiohttp" in res.stderr and argv[0] in res.stderr
    assert res.stdout == ""


def test_the_refuser_really_refuses(tmp_path):
    """Guards the test above: the import must fail under the same set-up."""
    (tmp_path / "sitecustomize.py").write_text(REFUSER.format(refused=["aiohttp"]))
    res = subprocess.run([sys.executable, "-c", "import aiohttp"], capture_output=True,
                         text=True, timeout=COMMAND_TIMEOUT_S,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert res.returncode == 1 and "No module named 'aiohttp'" in res.stderr


def test_help_needs_no_extra(tmp_path):
    for verb in ("bench", "demo"):
        res = run_without(tmp_path, {"aiohttp", "matplotlib"}, verb, "--help")
        assert res.returncode == 0, res.stderr
        assert "--netns-prefix" in res.stdout and "TMD_NETNS_PREFIX" in res.stdout


@pytest.mark.parametrize("argv", [("instance", "list"), ("run", "--bridge", "br-none")])
def test_an_etcd_store_without_etcd3gw_is_one_line_naming_the_extra(tmp_path, argv):
    from transparent_md.store.etcd_client import ETCD_EXTRA_HINT

    # run's local copy of the fleet's records goes here, not to /var/lib/transparent-md
    cache = ("--cache", str(tmp_path / "cache.db")) if argv[0] == "run" else ()
    res = run_without(tmp_path, {"etcd3gw"}, *argv, *cache, "--store", "etcd://127.0.0.1:9/x")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert ETCD_EXTRA_HINT in res.stderr and "etcd3gw" in res.stderr
