"""A SQLite file that is not a vlm store is refused and left exactly as it was: no side files beside it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vlm.errors import VlmError
from vlm.inference.store import Store


def _foreign_wal_db(path: Path) -> bytes:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.execute("INSERT INTO notes (text) VALUES ('mine')")
    db.commit()
    db.close()  # the last connection checkpoints and removes -wal and -shm
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    return path.read_bytes()


@pytest.mark.parametrize("write", [False, True], ids=["evaluate reads", "predict writes"])
def test_a_foreign_wal_database_is_refused_and_untouched(tmp_path, write):
    path = tmp_path / "theirs.sqlite"
    before = _foreign_wal_db(path)
    with pytest.raises(VlmError, match="not a vlm prediction store"):
        Store(path, write=write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.sqlite"]
    assert path.read_bytes() == before


def test_side_files_that_were_there_stay(tmp_path):
    path = tmp_path / "theirs.sqlite"
    before = _foreign_wal_db(path)
    keep = tmp_path / "theirs.sqlite-shm"
    keep.write_bytes(b"")  # someone else's, not ours to remove
    with pytest.raises(VlmError):
        Store(path)
    assert keep.exists() and path.read_bytes() == before
