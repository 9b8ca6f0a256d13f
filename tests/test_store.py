"""The transcript store's contract, on SQLite (a file) and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio

import pytest
from services import postgres

from server.core.events import Final
from server.core.requests import WordTiming
from server.service.store import SqliteStore, open_store


@pytest.fixture(scope="module")
def pg_url():
    with postgres() as url:
        yield url


def _final(segment: int, start: float, text: str) -> Final:
    return Final(segment, text, start, start + 1.0, 8, "en", 5.0, (WordTiming(text.split()[0], start, start + 0.4, 0.9),))


async def _contract(make) -> tuple:
    store = make()
    first = await store.open_room("standup", 1000.0)
    again = await store.open_room("standup", 2000.0)  # a second opener (a restart, another replica): same clock
    await store.add_final("standup", "bob", "s2", _final(0, 3.0, "bob speaks"))
    await store.add_final("standup", "alice", "s1", _final(0, 1.0, "alice first"))
    await store.add_final("standup", "alice", "s1", _final(1, 5.0, "alice again"))
    await store.add_final("standup", "alice", "s1", _final(1, 5.0, "alice again"))  # a retry: no duplicate
    await store.open_room("empty", 1500.0)
    await store.close()
    store = make()  # reopened: everything is still there
    transcript = await store.transcript("standup")
    rooms = await store.rooms()
    deleted, missing = await store.delete("standup"), await store.delete("standup")
    after = await store.transcript("standup")
    await store.close()
    return first, again, transcript, rooms, deleted, missing, after


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_store_keeps_finals_in_time_order_across_reopening_and_deletes_them(backend, tmp_path, request):
    url = str(tmp_path / "t.sqlite3") if backend == "sqlite" else request.getfixturevalue("pg_url")
    first, again, transcript, rooms, deleted, missing, after = asyncio.run(_contract(lambda: open_store(url)))
    assert first == again == 1000.0
    assert [(f.speaker, f.segment, f.text) for f in transcript] == [
        ("alice", 0, "alice first"), ("bob", 0, "bob speaks"), ("alice", 1, "alice again")]
    assert transcript[0].words == (WordTiming("alice", 1.0, 1.4, 0.9),)
    assert [(r.name, r.started, r.finals, set(r.speakers)) for r in rooms] == [
        ("standup", 1000.0, 3, {"alice", "bob"}), ("empty", 1500.0, 0, set())]
    assert deleted is True and missing is False and after == []
    assert isinstance(open_store(None), SqliteStore)
