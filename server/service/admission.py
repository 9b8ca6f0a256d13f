"""Who may connect and who may open a session, counted where each really starts and ends.

How this works
--------------
Three bounds, each released on every path out:

* **pending handshakes**: TCP connections accepted whose websocket handshake has not
  finished (or failed) yet. An idle socket that never sends a request holds one until the
  handshake timeout; past ``max_pending`` new sockets are closed at accept, before a byte
  is read, so idle connections cannot use up the file descriptors real sessions need.
* **connections per address**: pending plus open ones from one IP; past ``max_per_address``
  that address's new sockets are closed at accept.
* **sessions**: counted when a session starts (the handler runs) and released when it
  ends, never in the HTTP hook: a handshake that fails after the hook (a plain GET, a bad
  key, a client that hangs up) never becomes a session, so it can hold no slot.

The transport calls :meth:`arrive` / :meth:`leave` from the connection's own
``connection_made`` / ``connection_lost`` and :meth:`start_session` / :meth:`end_session`
from its handler. No I/O here; the caller closes what is refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["Admission", "Limits"]


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 64
    max_per_address: int = 32
    max_pending: int = 64


class Admission:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sessions = 0
        self.pending = 0
        self.refused_at_accept = 0
        self._per_address: Counter[str] = Counter()

    def arrive(self, address: str) -> bool:
        """A TCP connection from ``address`` was accepted; False: close it now."""
        if self.pending >= self.limits.max_pending or self._per_address[address] >= self.limits.max_per_address:
            self.refused_at_accept += 1
            return False
        self.pending += 1
        self._per_address[address] += 1
        return True

    def handshake_over(self) -> None:
        """The handshake of an arrived connection finished or failed (called once per arrival)."""
        self.pending -= 1

    def leave(self, address: str) -> None:
        """An arrived connection is gone."""
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]

    def connections_from(self, address: str) -> int:
        return self._per_address[address]

    @property
    def full(self) -> bool:
        return self.sessions >= self.limits.max_sessions

    def start_session(self) -> bool:
        """A handshake completed; False: no slot (raced past the HTTP 503 check)."""
        if self.full:
            return False
        self.sessions += 1
        return True

    def end_session(self) -> None:
        self.sessions -= 1
