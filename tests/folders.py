"""Folders with properties tests need, built the same way for every test module."""

from __future__ import annotations

from pathlib import Path

import pytest


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write (root ignores permission bits: use a read-only kernel folder)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return folder
    probe.unlink()
    for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
        try:
            (candidate / ".vivit-probe").write_bytes(b"")
        except OSError:
            return candidate
    pytest.skip("no read-only folder available to this user")
