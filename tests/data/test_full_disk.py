"""A full disk is reported with the file being written (simulated: ENOSPC from the write, a hard-to-reach failure)."""

from __future__ import annotations

import errno
import os

import pytest

from vlm import fsutil
from vlm.cli import describe_os_error


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "data" / "cord_train.json"
    target.parent.mkdir()
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsutil.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        fsutil.atomic_write_text(target, "new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert describe_os_error(e.value) == f"{target}: No space left on device"
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["cord_train.json"]
