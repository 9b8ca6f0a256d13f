"""The rooms' transcripts in PostgreSQL (``--db postgresql://...``): several replicas, one store.

How this works
--------------
The same calls as :class:`~server.service.store.SqliteStore`, on one psycopg 3
``AsyncConnection`` (asyncio-native: queries never block the event loop), used by one
call at a time (an ``asyncio.Lock``; callers queue on it, bounded by ``MAX_PENDING``).
Autocommit: each statement is its own transaction, so ``add_final`` returns once the
final is committed. A room's clock start is inserted once (``ON CONFLICT DO NOTHING``)
and read back, so every replica puts a room's finals on the same clock. A lost
connection is reopened once per call before the error is raised.
"""

from __future__ import annotations

import asyncio
import json

from server.core.events import Final
from server.core.requests import WordTiming
from server.service.store import MAX_PENDING, RoomRecord, StoredFinal

__all__ = ["PostgresStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS dgasr_rooms (name TEXT PRIMARY KEY, started DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS dgasr_finals (
    id BIGSERIAL PRIMARY KEY, room TEXT NOT NULL, stream TEXT NOT NULL, speaker TEXT NOT NULL,
    segment INTEGER NOT NULL, start DOUBLE PRECISION NOT NULL, "end" DOUBLE PRECISION NOT NULL,
    text TEXT NOT NULL, words JSONB NOT NULL, UNIQUE (room, stream, segment));
CREATE INDEX IF NOT EXISTS dgasr_finals_by_room ON dgasr_finals (room, start);
"""


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = None
        self._lock: asyncio.Lock | None = None
        self._pending: asyncio.Semaphore | None = None

    async def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            async with self._conn.cursor() as cur:
                await cur.execute("SELECT pg_advisory_lock(7254001)")  # two replicas creating the tables at once
                try:
                    await cur.execute(SCHEMA)
                finally:
                    await cur.execute("SELECT pg_advisory_unlock(7254001)")
        return self._conn

    async def _run(self, sql: str, args: tuple = (), fetch: bool = False):
        import psycopg

        if self._lock is None:
            self._lock, self._pending = asyncio.Lock(), asyncio.Semaphore(MAX_PENDING)
        async with self._pending, self._lock:
            for attempt in (0, 1):
                try:
                    conn = await self._connection()
                    async with conn.cursor() as cur:
                        await cur.execute(sql, args)
                        return await cur.fetchall() if fetch else cur.rowcount
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt:
                        raise

    async def open_room(self, name: str, now: float) -> float:
        await self._run("INSERT INTO dgasr_rooms (name, started) VALUES (%s, %s) ON CONFLICT DO NOTHING", (name, now))
        return (await self._run("SELECT started FROM dgasr_rooms WHERE name = %s", (name,), fetch=True))[0][0]

    async def add_final(self, room: str, speaker: str, stream: str, final: Final) -> None:
        words = json.dumps([[w.word, w.start, w.end, w.confidence] for w in final.words], ensure_ascii=False)
        await self._run('INSERT INTO dgasr_finals (room, stream, speaker, segment, start, "end", text, words) '
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (room, stream, segment) DO UPDATE "
                        'SET start = EXCLUDED.start, "end" = EXCLUDED."end", text = EXCLUDED.text, '
                        "words = EXCLUDED.words",
                        (room, stream, speaker, final.segment, final.start, final.end, final.text, words))

    async def transcript(self, room: str) -> list[StoredFinal]:
        rows = await self._run('SELECT speaker, stream, segment, start, "end", text, words FROM dgasr_finals '
                               "WHERE room = %s ORDER BY start, stream, segment", (room,), fetch=True)
        return [StoredFinal(s, st, seg, a, b, t, tuple(WordTiming(*w) for w in ws)) for s, st, seg, a, b, t, ws in rows]

    async def rooms(self) -> list[RoomRecord]:
        rows = await self._run("SELECT r.name, r.started, COUNT(f.id) FROM dgasr_rooms r LEFT JOIN dgasr_finals f "
                               "ON f.room = r.name GROUP BY r.name, r.started ORDER BY r.started", fetch=True)
        speakers: dict[str, list[str]] = {}
        for room, speaker in await self._run("SELECT room, speaker FROM dgasr_finals GROUP BY room, speaker "
                                             "ORDER BY MIN(id)", fetch=True):
            speakers.setdefault(room, []).append(speaker)
        return [RoomRecord(n, s, c, tuple(speakers.get(n, ()))) for n, s, c in rows]

    async def delete(self, room: str) -> bool:
        gone = await self._run("DELETE FROM dgasr_finals WHERE room = %s", (room,))
        gone += await self._run("DELETE FROM dgasr_rooms WHERE name = %s", (room,))
        return gone > 0

    async def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()
        self._conn = None
