"""The prediction store: one SQLite file, one row per (group, split, document).

Rows are committed a chunk at a time in one transaction, so a killed run keeps
every finished chunk and loses nothing that was committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vlm.errors import VlmError
from vlm.inference.token_scores import TokenScores, as_json, pack, unpack

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    grp TEXT NOT NULL,
    split TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    raw TEXT NOT NULL,
    parsed TEXT,
    parse_error TEXT,
    repairs TEXT NOT NULL DEFAULT '[]',
    ground_truth TEXT NOT NULL,
    latency_s REAL,
    model_hash TEXT,
    adapter_hash TEXT,
    prompt_hash TEXT,
    gen_hash TEXT,
    created REAL NOT NULL,
    token_scores BLOB,
    PRIMARY KEY (grp, split, doc_id)
);
CREATE TABLE IF NOT EXISTS runs (
    grp TEXT NOT NULL,
    split TEXT NOT NULL,
    started REAL NOT NULL,
    settings TEXT NOT NULL
);
"""


@dataclass
class Prediction:
    group: str
    split: str
    doc_id: str
    raw: str
    parsed: dict | None
    parse_error: str | None
    repairs: list[str]
    ground_truth: Any
    latency_s: float | None = None
    model_hash: str | None = None
    adapter_hash: str | None = None
    prompt_hash: str | None = None
    gen_hash: str | None = None
    scores: TokenScores | None = None  # the tokens' log-probabilities; None in rows stored before they were kept


# Columns added after the first stores were written: (name, type). A store opened for writing gets them
# (``_migrate``); a reader selects NULL for one its file lacks, so old stores read as they are.
_ADDED = (("token_scores", "BLOB"),)
_COLUMNS = ("grp, split, doc_id, raw, parsed, parse_error, repairs, ground_truth, latency_s, model_hash, "
            "adapter_hash, prompt_hash, gen_hash, created, token_scores")


class Store:
    """The SQLite file. ``Store(path)`` opens an existing store read-only (evaluate, export);
    ``Store(path, write=True)`` opens or creates one for ``vlm predict``.

    A store is never seen without its tables: a new one is built beside its final name and linked
    into place whole. A SQLite file that is not a vlm store is refused, never modified.
    """

    def __init__(self, path: str | Path, write: bool = False):
        self.path = Path(path)
        self.db = _open_for_writing(self.path) if write else _open_read_only(self.path)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(predictions)")}
        self._scores_column = "token_scores" if "token_scores" in have else "NULL"

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done_ids(self, group: str, split: str) -> set[str]:
        rows = self.db.execute("SELECT doc_id FROM predictions WHERE grp=? AND split=?", (group, split))
        return {r[0] for r in rows}

    def ids_made_otherwise(self, group: str, split: str, current: tuple) -> set[str]:
        """Documents of a group stored with other (model, adapter, prompt, generation) hashes than ``current``."""
        rows = self.db.execute("SELECT doc_id, model_hash, adapter_hash, prompt_hash, gen_hash FROM predictions "
                               "WHERE grp=? AND split=?", (group, split))
        return {r[0] for r in rows if tuple(r[1:]) != tuple(current)}

    def log_run(self, group: str, split: str, settings: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT INTO runs VALUES (?,?,?,?)",
                            (group, split, time.time(), json.dumps(settings, sort_keys=True, default=str)))

    def settings_in(self, group: str, split: str) -> dict[tuple, int]:
        """How many of a group's rows each (model, adapter, prompt, generation) hash set made."""
        rows = self.db.execute("SELECT model_hash, adapter_hash, prompt_hash, gen_hash, COUNT(*) FROM predictions "
                               "WHERE grp=? AND split=? GROUP BY 1, 2, 3, 4", (group, split))
        return {tuple(r[:4]): r[4] for r in rows}

    def put_many(self, preds: list[Prediction], replaceable: set[str] | None = None) -> None:
        """Insert or replace a chunk of predictions in one transaction.

        The write lock is taken first, and the group is checked under it: when another run has meanwhile
        stored rows of this group with other settings (other than ``replaceable``, the ids an --overwrite
        run redoes), the chunk is refused, so a group never ends up holding two runs' settings.
        """
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if preds:
                first = preds[0]
                current = (first.model_hash, first.adapter_hash, first.prompt_hash, first.gen_hash)
                other = self.ids_made_otherwise(first.group, first.split, current) - (replaceable or set())
                if other:
                    raise VlmError(
                        f"group {first.group!r} now holds {len(other)} {first.split} predictions made with other "
                        f"settings by another run (e.g. {min(other)}); this run stopped before mixing them in",
                        hint="run one vlm predict per group at a time; use a new --group name for other settings.")
            self.db.executemany(
                f"INSERT OR REPLACE INTO predictions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(p.group, p.split, p.doc_id, p.raw,
                  None if p.parsed is None else json.dumps(p.parsed, ensure_ascii=False),
                  p.parse_error, json.dumps(p.repairs), json.dumps(p.ground_truth, ensure_ascii=False),
                  p.latency_s, p.model_hash, p.adapter_hash, p.prompt_hash, p.gen_hash, now, pack(p.scores))
                 for p in preds],
            )

    def last_run(self, group: str, split: str) -> dict[str, Any] | None:
        """The settings ``vlm predict`` logged for the latest run of a group on a split."""
        row = self.db.execute("SELECT settings FROM runs WHERE grp=? AND split=? ORDER BY started DESC LIMIT 1",
                              (group, split)).fetchone()
        return json.loads(row[0]) if row else None

    def groups(self) -> list[tuple[str, str, int]]:
        rows = self.db.execute("SELECT grp, split, COUNT(*) FROM predictions GROUP BY grp, split ORDER BY grp, split")
        return [tuple(r) for r in rows]

    def load(self, group: str, split: str) -> list[Prediction]:
        rows = self.db.execute(
            "SELECT grp, split, doc_id, raw, parsed, parse_error, repairs, ground_truth, latency_s, model_hash, "
            f"adapter_hash, prompt_hash, gen_hash, {self._scores_column} FROM predictions WHERE grp=? AND split=? "
            "ORDER BY doc_id",
            (group, split),
        )
        return [
            Prediction(r[0], r[1], r[2], r[3], None if r[4] is None else json.loads(r[4]), r[5], json.loads(r[6]),
                       json.loads(r[7]), r[8], r[9], r[10], r[11], r[12], unpack(r[13]))
            for r in rows
        ]

    def export_jsonl(self, group: str, split: str) -> list[dict[str, Any]]:
        """Rows in the ``{"id", "prediction", "ground_truth"}`` form that ``vlm evaluate --predictions`` reads."""
        return [
            {"id": p.doc_id, "group": p.group, "split": p.split, "prediction": p.raw, "parsed": p.parsed,
             "parse_error": p.parse_error, "repairs": p.repairs, "ground_truth": p.ground_truth,
             "latency_s": p.latency_s, "model_hash": p.model_hash, "adapter_hash": p.adapter_hash,
             "prompt_hash": p.prompt_hash, "gen_hash": p.gen_hash, "token_scores": as_json(p.scores)}
            for p in self.load(group, split)
        ]


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path.resolve()))}?{mode}"


SIDE_FILES = ("-wal", "-shm")  # what SQLite makes beside a WAL-mode file when it is opened


def _side_files(path: Path) -> set[Path]:
    return {p for p in (Path(f"{path}{s}") for s in SIDE_FILES) if p.exists()}


def _refuse(db: sqlite3.Connection, path: Path, before: set[Path], error: VlmError | None) -> VlmError | None:
    """Close ``db`` and remove the side files opening it made, so a refused file is left as it was. Only files
    that were not there before, and only while the write-ahead log holds nothing."""
    db.close()
    made = _side_files(path) - before
    wal = Path(f"{path}-wal")
    if not (wal.exists() and wal.stat().st_size):
        for side in made:
            with contextlib.suppress(OSError):
                side.unlink()
    return error


def _check_schema(db: sqlite3.Connection, path: Path, before: set[Path]) -> None:
    """Refuse a file that is not a vlm store (not SQLite, or SQLite without our tables)."""
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.OperationalError as e:  # a full disk, an I/O error, a lock: the file may be a good store
        raise _refuse(db, path, before, VlmError(
            f"cannot read the prediction store {path}: {e}",
            hint="check free disk space, permissions and that no other program holds it; it was left unchanged.")) \
            from None
    except sqlite3.DatabaseError as e:
        raise _refuse(db, path, before, VlmError(
            f"{path} is not a vlm prediction store: {e}",
            hint="pass --store with a file written by vlm predict, or a new path.")) from None
    if not {"predictions", "runs"} <= tables:
        raise _refuse(db, path, before, VlmError(
            f"{path} is not a vlm prediction store (its tables: {', '.join(sorted(tables)) or 'none'})",
            hint="pass --store with a file written by vlm predict, or a new path; it was left unchanged."))


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Readers never write: no WAL switch, no tables created, and it works on read-only storage."""
    if not path.is_file():
        raise VlmError(f"prediction store not found: {path}", hint="run vlm predict first, or pass --store PATH.")
    # mode=ro still needs a writable folder for a WAL store's shared-memory file; immutable=1 does not.
    before = _side_files(path)
    for mode in ("mode=ro", "immutable=1"):
        try:
            db = sqlite3.connect(_uri(path, mode), uri=True, timeout=30)
        except sqlite3.OperationalError:
            continue
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            _refuse(db, path, before, None)
            continue
        except sqlite3.DatabaseError as e:
            raise _refuse(db, path, before, VlmError(f"{path} is not a vlm prediction store: {e}",
                                                     hint="pass --store with a file written by vlm predict.")) from None
        _check_schema(db, path, before)
        return db
    raise VlmError(f"cannot read the prediction store {path}", hint="check its permissions.")


def _open_for_writing(path: Path) -> sqlite3.Connection:
    if not path.exists():
        _create(path)
    before = _side_files(path)
    try:
        db = sqlite3.connect(_uri(path, "mode=rw"), uri=True, timeout=30)
    except sqlite3.OperationalError as e:
        raise VlmError(f"cannot open the prediction store {path} for writing: {e}",
                       hint="check that it is a file you can write, or pass another --store.") from None
    _check_schema(db, path, before)
    db.execute("PRAGMA journal_mode=WAL")  # readers are not blocked while a run commits chunks
    _migrate(db)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns newer versions write to a store made before them; its rows keep NULL there. Under the
    write lock (taken only when a column is missing), so two runs opening the same old store do not both add it."""
    if {name for name, _ in _ADDED} <= {r[1] for r in db.execute("PRAGMA table_info(predictions)")}:
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        have = {r[1] for r in db.execute("PRAGMA table_info(predictions)")}
        for name, kind in _ADDED:
            if name not in have:
                db.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")


def _create(path: Path) -> None:
    """Build an empty store beside ``path`` with its tables, then link it into place whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        db.executescript(_SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")  # WAL is a property of the file, so it carries over
        db.close()
        try:
            os.link(tmp, path)  # never replaces a store another run created meanwhile
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
