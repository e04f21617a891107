"""Process and libc helpers, in one place: stop a child, die with the parent, setns, limits,
named threads.

Everything here acts only on processes we started (by PID) or on our own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

PR_SET_NAME = 15  # prctl(2)
# The kernel's thread name holds 16 bytes with the terminating NUL.
THREAD_NAME_MAX = 15
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000


def check(result: int) -> int:
    """Raise OSError with errno for a libc call that returned -1."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def setns_net(fd: int) -> None:
    """Move this thread into the network namespace open on `fd`."""
    check(libc.setns(fd, CLONE_NEWNET))


def enter_mount_namespace_of(pid: int) -> bool:
    """Move this (single-threaded) process into the mount namespace of process `pid`;
    False when it is ours already. A daemon started under `ip netns exec` has a /sys of
    its own, and its BPF pins are only seen from there."""
    target = f"/proc/{pid}/ns/mnt"
    if os.stat(target).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
        return False
    fd = os.open(target, os.O_RDONLY)
    try:
        check(libc.setns(fd, CLONE_NEWNS))
    finally:
        os.close(fd)
    return True


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by PID."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the process `parent_pid` (our parent) exits.

    The check compares with the parent we were started by, not with PID 1: a daemon
    that is itself PID 1 (in a container) is a perfectly live parent.
    """
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM))
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` in /proc (top -H, ps -L): the kernel keeps 15 bytes.

    Python's thread names are its own; without this every helper shows as "python".
    """
    libc.prctl(PR_SET_NAME, name.encode()[:THREAD_NAME_MAX], 0, 0, 0)


def start_thread(name: str, target: Callable[[], object]) -> threading.Thread:
    """Start a daemon thread called `name`, in Python and in /proc, running `target`."""

    def run() -> None:
        name_this_thread(name)
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def raise_nofile_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) now in force.

    systemd and most shells start services with a soft limit of 1024, which a few
    hundred guests' connections exhaust; the hard limit is the operator's real ceiling.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s",
                        soft, target, exc)
    return soft, hard
