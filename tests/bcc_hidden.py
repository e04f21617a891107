"""An environment in which the daemon cannot import bcc: a shim package first on its
path raises ImportError, as on a host where bcc is not installed."""

from __future__ import annotations

import os
from pathlib import Path

NO_BCC = 'raise ImportError("bcc hidden by the test")\n'


def env_without_bcc(workdir: Path) -> dict[str, str]:
    """PYTHONPATH for a daemon (and its compile helper) that finds no bcc."""
    shim = workdir / "shim"
    (shim / "bcc").mkdir(parents=True, exist_ok=True)
    (shim / "bcc" / "__init__.py").write_text(NO_BCC)
    # First on the path, before whatever the test run already put there.
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim),
                                                        os.environ.get("PYTHONPATH")]))}
