"""Where rooms' transcripts live: a small storage interface, and SQLite behind it by default.

How this works
--------------
:class:`TranscriptStore` is what the rooms need: open a room (its clock's start is
stored, so it survives restarts), add a final, read a room's transcript, list the rooms,
delete a transcript. :class:`SqliteStore` implements it with the standard library's
``sqlite3`` on one worker thread of its own (a SQLite connection belongs to one thread),
so no query ever runs on the event loop; each call is awaited through
``run_in_executor``. At most ``MAX_PENDING`` calls wait for the thread (callers beyond
that wait their turn), so a slow disk slows the rooms' fan-out, never the engine.

Each final is committed on its own, in WAL mode with ``synchronous=FULL``: when
``add_final`` returns, the final is on disk, and the rooms send a final to subscribers
only after that, so a final anyone saw survives a crash. :mod:`server.service.pgstore`
implements the same calls on PostgreSQL, for several replicas sharing one store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.core.events import Final
from server.core.requests import WordTiming

__all__ = ["MAX_PENDING", "RoomRecord", "SqliteStore", "StoredFinal", "TranscriptStore", "open_store"]

MAX_PENDING = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS finals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, stream TEXT NOT NULL, speaker TEXT NOT NULL,
    segment INTEGER NOT NULL, start REAL NOT NULL, "end" REAL NOT NULL, text TEXT NOT NULL, words TEXT NOT NULL,
    UNIQUE (room, stream, segment));
CREATE INDEX IF NOT EXISTS finals_by_room ON finals (room, start);
"""


@dataclass(frozen=True)
class StoredFinal:
    speaker: str
    stream: str
    segment: int
    start: float  # room clock
    end: float
    text: str
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True)
class RoomRecord:
    name: str
    started: float  # wall-clock seconds
    finals: int
    speakers: tuple[str, ...]


class TranscriptStore(Protocol):
    async def open_room(self, name: str, now: float) -> float:
        """The room's start time (``now`` if it is new)."""

    async def add_final(self, room: str, speaker: str, stream: str, final: Final) -> None: ...

    async def transcript(self, room: str) -> list[StoredFinal]:
        """The room's finals in time order (start, then stream); empty if none."""

    async def rooms(self) -> list[RoomRecord]: ...

    async def delete(self, room: str) -> bool:
        """Forget the room's transcript; False if there was none."""

    async def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgasr-store")
        self._local = threading.local()
        self._pending: asyncio.Semaphore | None = None
        self._pool.submit(self._db).result()  # open (and create) now: a bad path fails at start-up

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(str(Path(self.path).expanduser()) if self.path != ":memory:"
                                                  else self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        return db

    async def _run(self, fn, *args):
        if self._pending is None:
            self._pending = asyncio.Semaphore(MAX_PENDING)
        async with self._pending:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open_room(self, name: str, now: float) -> float:
        def work() -> float:
            db = self._db()
            with db:
                db.execute("INSERT OR IGNORE INTO rooms (name, started) VALUES (?, ?)", (name, now))
            return db.execute("SELECT started FROM rooms WHERE name = ?", (name,)).fetchone()[0]

        return await self._run(work)

    async def add_final(self, room: str, speaker: str, stream: str, final: Final) -> None:
        words = json.dumps([[w.word, w.start, w.end, w.confidence] for w in final.words], ensure_ascii=False)

        def work() -> None:
            with self._db() as db:
                db.execute('INSERT OR REPLACE INTO finals (room, stream, speaker, segment, start, "end", text, words) '
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (room, stream, speaker, final.segment, final.start, final.end, final.text, words))

        await self._run(work)

    async def transcript(self, room: str) -> list[StoredFinal]:
        def work() -> list[StoredFinal]:
            rows = self._db().execute('SELECT speaker, stream, segment, start, "end", text, words FROM finals '
                                      "WHERE room = ? ORDER BY start, stream, segment", (room,)).fetchall()
            return [StoredFinal(s, st, seg, a, b, t, tuple(WordTiming(*w) for w in json.loads(ws)))
                    for s, st, seg, a, b, t, ws in rows]

        return await self._run(work)

    async def rooms(self) -> list[RoomRecord]:
        def work() -> list[RoomRecord]:
            db = self._db()
            rows = db.execute("SELECT r.name, r.started, COUNT(f.id) FROM rooms r LEFT JOIN finals f ON f.room = r.name "
                              "GROUP BY r.name ORDER BY r.started").fetchall()
            speakers: dict[str, list[str]] = {}
            for room, speaker in db.execute("SELECT room, speaker FROM finals GROUP BY room, speaker "
                                            "ORDER BY MIN(id)"):
                speakers.setdefault(room, []).append(speaker)
            return [RoomRecord(n, s, c, tuple(speakers.get(n, ()))) for n, s, c in rows]

        return await self._run(work)

    async def delete(self, room: str) -> bool:
        def work() -> bool:
            with self._db() as db:
                gone = db.execute("DELETE FROM finals WHERE room = ?", (room,)).rowcount
                gone += db.execute("DELETE FROM rooms WHERE name = ?", (room,)).rowcount
            return gone > 0

        return await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            db = getattr(self._local, "db", None)
            if db is not None:
                db.close()
                self._local.db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, work)
        self._pool.shutdown(wait=True)


def open_store(url: str | None) -> TranscriptStore:
    """The store a ``--db`` value names: ``postgresql://...`` (shared by replicas), else a SQLite
    file path (None: in memory, nothing kept)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ValueError("--db postgresql://... needs psycopg: pip install 'dgasr[postgres]'") from None
        from server.service.pgstore import PostgresStore

        return PostgresStore(url)
    return SqliteStore(url or ":memory:")
