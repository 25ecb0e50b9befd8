"""vivit.files: a file is the old one or the whole new one, and no temporary file outlives a write."""

from __future__ import annotations

import os
import stat

import pytest

from vivit.files import write_atomic, write_folder_atomic, write_text_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    assert write_text_atomic(target, "new") == target
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_temporary_keeps_the_suffix_for_writers_that_read_it_and_mode_is_applied(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp.name)
        tmp.write_bytes(b"png")
        os.chmod(tmp, 0o600)

    write_atomic(tmp_path / "attention.png", write, keep_suffix=True, mode=0o644)
    assert seen[0].startswith(".attention.png.") and seen[0].endswith(".tmp.png")
    assert stat.S_IMODE((tmp_path / "attention.png").stat().st_mode) == 0o644


def test_write_folder_atomic_leaves_a_whole_folder_or_none(tmp_path):
    target = tmp_path / "entry"

    def fail(tmp):
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomic(target, fail)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary folder
    assert write_folder_atomic(target, lambda tmp: (tmp / "a").write_text("first")) is True
    # a second writer finishing later keeps the first folder and drops its own
    assert write_folder_atomic(target, lambda tmp: (tmp / "a").write_text("second")) is False
    assert (target / "a").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["entry"]
