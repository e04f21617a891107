"""Set-up problems give one message that names the fix (checked below the real daemon)."""

from __future__ import annotations

import platform

import pytest

from transparent_md.datapath import programs
from transparent_md.errors import UserError


def test_missing_kernel_headers_names_the_links_to_make(monkeypatch):
    monkeypatch.setattr(platform, "release", lambda: "0.0.0-no-such-kernel")
    with pytest.raises(UserError) as err:
        programs.check_kernel_headers()
    message = str(err.value)
    assert "/lib/modules/0.0.0-no-such-kernel/build" in message
    assert "linux-headers" in message and "scripts/setup" in message


@pytest.mark.netns  # compiling and loading BPF needs root
def test_compile_failure_in_the_child_arrives_as_one_line(tmp_path):
    # An impossible define makes the real compile fail inside the child process.
    with pytest.raises(UserError) as err:
        programs.compile_and_pin(tmp_path, ("-DTMD_MAX_SLOTS=(",))
    assert "could not compile or load the BPF programs" in str(err.value)
    assert "\n" not in str(err.value)
