"""The store's files are private: they hold every tenant's IAM credentials and user-data.

New directories are made 0700 and new files 0600 (whatever the umask). Existing ones
are left as the operator set them (a group may be trusted on purpose), but a store
file that others can read is reported once, with the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Bits that let anyone but the owner read or change a file.
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


def make_private_dir(directory: str) -> None:
    """Create `directory` (and parents) 0700 if missing; an existing one is kept as is."""
    if os.path.isdir(directory):
        return
    os.makedirs(directory, mode=PRIVATE_DIR_MODE, exist_ok=True)
    os.chmod(directory, PRIVATE_DIR_MODE)  # makedirs' mode is masked by the umask


def create_private_file(path: str) -> None:
    """Create `path` empty with mode 0600 unless it exists (so SQLite never makes it 0644)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have removed bits, never added
    finally:
        os.close(fd)


def loose_mode_warning(path: str) -> str | None:
    """A warning if group or others may access `path`, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & _SHARED_BITS:
        return None
    return (f"the instance store {path} is mode {stat.S_IMODE(mode):04o}: other users can "
            f"read its IAM credentials and user-data; run: chmod 600 {path}")
