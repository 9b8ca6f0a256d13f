"""The websocket side of ``dgasr-client``: one conversation, and reconnects for the mic.

How this works
--------------
:func:`open_connection` performs the handshake and turns every way it can fail into a
:class:`ClientError` carrying the exit code (HTTP 400/503 show the server's JSON message).

:func:`converse` runs one connection as three tasks: the *sender* takes chunks from an
:class:`AudioFeed` and sends them as binary frames, then ``eos``; the *receiver* parses
server events and hands them to a callback until ``closed``; a *keep-alive* timer sends
``keepalive`` when no frame went out for a while (an idle pipe). When ``stop`` is set
(Ctrl-C) the feed is told to finish, so the sender sends what is captured and ``eos``,
and the receiver gets at most ``eos_wait`` seconds for the remaining finals.

For a microphone, :func:`run_live` keeps the audio in a :class:`Backlog` that outlives
connections: a pump task moves captured chunks into it whatever the connection is doing,
and a final's end *commits* (frees) the audio before it. When a connection drops, the
next one replays the backlog from its oldest uncommitted chunk, so the segment that was
open is transcribed again and nothing spoken meanwhile is lost. Event times from a
replaying connection are shifted by where its audio starts, so timestamps stay on one
timeline, and its segment ids continue after the last final (the segment that was open
starts again under its old id). Reconnects back off exponentially (``Retry-After`` wins
on 503) and give up after ``max_attempts`` failures in a row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from server.wire.v1 import (
    LISTEN_PATH,
    Closed,
    Eos,
    Error,
    Final,
    KeepAlive,
    ListenParams,
    ServerMessage,
    parse_server_message,
)

from .feeds import AudioFeed, Backlog, BacklogFeed

__all__ = [
    "ExitCode",
    "ClientError",
    "ConnectionLost",
    "build_url",
    "open_connection",
    "closing",
    "Outcome",
    "converse",
    "run_live",
    "shift_times",
]

EOS_WAIT_S = 10.0
KEEPALIVE_S = 5.0


class ExitCode(enum.IntEnum):
    OK = 0
    SERVER = 1  # refused (HTTP 4xx/5xx), fatal server error, connection lost for good
    USAGE = 2  # bad arguments or unreadable input
    DEVICE = 3  # no PortAudio, no input device, capture failed
    UNREACHABLE = 4  # nothing answers at --url
    ABORTED = 130  # a second Ctrl-C: stopped without waiting for the last finals


class ClientError(Exception):
    """Ends the run: a one-line message for stderr and the exit code to return."""

    def __init__(self, message: str, code: ExitCode = ExitCode.SERVER, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after  # set for a 503, so a reconnect can honour it


class ConnectionLost(ClientError):
    """The connection ended before ``closed``; a live session may reconnect."""


def build_url(base: str, params: ListenParams) -> str:
    """``ws://host:port`` (or ``http://``) plus ``/v1/listen`` and the query string."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith(LISTEN_PATH):
        path += LISTEN_PATH
    query = "&".join(q for q in (parts.query, urlencode(params.to_query())) if q)
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _refusal(exc: InvalidStatus) -> ClientError:
    """The server's JSON body (``{"error", "field", "message"}``) as one line."""
    response = exc.response
    status = response.status_code
    detail = ""
    try:
        body = json.loads(bytes(response.body).decode("utf-8"))
        if isinstance(body, dict):
            detail = str(body.get("message") or body.get("error") or "")
            if body.get("field"):
                detail = f"{body['field']}: {detail}"
    except (ValueError, UnicodeDecodeError):
        detail = bytes(response.body).decode("utf-8", "replace")
    detail = " ".join(detail.split())[:300]
    retry_after = None
    if status == 503:
        with suppress(TypeError, ValueError):
            retry_after = float(response.headers.get("Retry-After", ""))
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        retry_after = retry_after or 0.0  # "busy" is always worth a retry; 0 means use the backoff
        text = f"server is busy (HTTP 503){hint}"
    else:
        text = f"server refused the connection (HTTP {status} {response.reason_phrase})"
    return ClientError(f"{text}: {detail}" if detail else text, ExitCode.SERVER, retry_after)


async def open_connection(url: str, params: ListenParams, open_timeout: float = 10.0) -> ClientConnection:
    """Connect and handshake.

    Raises:
        ClientError: refused (code SERVER), bad URL (USAGE), nothing answering (UNREACHABLE).
    """
    try:
        full = build_url(url, params)
        # Audio does not compress; deflate would only cost CPU on both ends.
        # A short close_timeout: after Ctrl-C's bounded wait, closing must not add 10 s more.
        return await connect(full, open_timeout=open_timeout, close_timeout=2, compression=None, max_size=2**20)
    except InvalidStatus as exc:
        raise _refusal(exc) from None
    except (InvalidURI, ValueError):
        raise ClientError(f"bad --url {url!r}: expected ws://HOST:PORT or wss://HOST:PORT", ExitCode.USAGE) from None
    except InvalidHandshake as exc:
        raise ClientError(f"websocket handshake with {url} failed: {exc}", ExitCode.SERVER) from None
    except TimeoutError:
        raise ClientError(f"cannot reach server at {url}: no answer within {open_timeout:g} s", ExitCode.UNREACHABLE) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ClientError(f"cannot reach server at {url}: {reason}", ExitCode.UNREACHABLE) from None


@asynccontextmanager
async def closing(ws: ClientConnection) -> AsyncIterator[ClientConnection]:
    """Close with 1000 after a normal end, 1001 (going away) when the client gives up.

    ``async with ws`` would send 1011 (internal error) for any exception, which would
    tell the server's logs that the client crashed when it merely stopped waiting.
    """
    try:
        yield ws
    except BaseException:
        await asyncio.shield(ws.close(1001, "client stopped"))
        raise
    await ws.close()


# ---- one connection ---------------------------------------------------------


def shift_times(message: ServerMessage, offset: float, segment_base: int = 0) -> ServerMessage:
    """``message`` with its times moved by ``offset`` s and segment ids by ``segment_base``."""
    if not offset and not segment_base:
        return message
    changes: dict[str, float | int] = {}
    for name in ("start", "end"):
        if hasattr(message, name):
            changes[name] = round(getattr(message, name) + offset, 3)
    if hasattr(message, "segment"):
        changes["segment"] = message.segment + segment_base  # type: ignore[union-attr]
    return dataclasses.replace(message, **changes) if changes else message  # type: ignore[type-var]


@dataclass
class _SendState:
    last_send: float = dataclasses.field(default_factory=time.monotonic)
    eos_sent: bool = False


async def _send_audio(ws: ClientConnection, feed: AudioFeed, state: _SendState) -> None:
    while (chunk := await feed.next()) is not None:
        await ws.send(chunk)
        state.last_send = time.monotonic()
    state.eos_sent = True
    await ws.send(Eos().to_json())


async def _keep_alive(ws: ClientConnection, state: _SendState, interval: float) -> None:
    # A timer, not a poll: it sleeps until `interval` after the last frame went out.
    while not state.eos_sent:
        await asyncio.sleep(max(0.0, state.last_send + interval - time.monotonic()))
        if not state.eos_sent and time.monotonic() - state.last_send >= interval:
            state.last_send = time.monotonic()
            await ws.send(KeepAlive().to_json())


async def _receive(ws: ClientConnection, on_event: Callable[[ServerMessage], None], warn: Callable[[str], None]) -> Closed:
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            try:
                message = parse_server_message(raw)
            except (ValueError, TypeError) as exc:  # a newer server, or a broken one
                warn(f"ignoring a message the client does not understand: {exc}")
                continue
            on_event(message)
            if isinstance(message, Closed):
                return message
    except ConnectionClosed as exc:
        raise ConnectionLost(f"connection lost: {_close_reason(exc)}") from None
    raise ConnectionLost(f"server closed the connection without a 'closed' message (code {ws.close_code})")


def _close_reason(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "the connection dropped"
    return f"code {frame.code}" + (f" ({frame.reason})" if frame.reason else "")


@dataclass(frozen=True)
class Outcome:
    closed: Closed
    eos_sent: bool  # False: the server ended the session on its own


async def converse(
    ws: ClientConnection,
    feed: AudioFeed,
    on_event: Callable[[ServerMessage], None],
    stop: asyncio.Event,
    *,
    warn: Callable[[str], None] = lambda _: None,
    eos_wait: float = EOS_WAIT_S,
    keepalive: float = KEEPALIVE_S,
) -> Outcome:
    """Send the feed, hand events to ``on_event``, return once ``closed`` arrives.

    Raises:
        ConnectionLost: the connection ended before ``closed``.
        ClientError: after ``stop``, no ``closed`` within ``eos_wait`` seconds.
    """
    state = _SendState()
    sender = asyncio.create_task(_send_audio(ws, feed, state))
    receiver = asyncio.create_task(_receive(ws, on_event, warn))
    timer = asyncio.create_task(_keep_alive(ws, state, keepalive))
    stopped = asyncio.create_task(stop.wait())
    deadline: float | None = None
    try:
        while not receiver.done():
            waiting = {t for t in (sender, receiver, stopped) if not t.done()}
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done and deadline is not None:
                raise ClientError(f"server did not finish within {eos_wait:g} s after Ctrl-C; the last finals may be missing")
            if sender in done and not sender.cancelled() and (exc := sender.exception()) is not None:
                if not isinstance(exc, ConnectionClosed):  # a closed socket is the receiver's to report
                    raise exc
            if stopped in done and deadline is None:
                feed.finish()
                deadline = time.monotonic() + eos_wait
        return Outcome(receiver.result(), state.eos_sent)
    finally:
        for task in (sender, receiver, timer, stopped):
            task.cancel()
        await asyncio.gather(sender, receiver, timer, stopped, return_exceptions=True)


# ---- the live (mic) session with reconnects ---------------------------------


async def run_live(
    url: str,
    params: ListenParams,
    chunks: AsyncIterator[bytes],
    stop_capture: Callable[[], None],
    on_event: Callable[[ServerMessage], None],
    stop: asyncio.Event,
    *,
    warn: Callable[[str], None],
    max_attempts: int = 5,
    replay_seconds: float = 60.0,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
) -> Closed:
    """Stream captured audio, reconnecting and replaying the backlog when a connection drops.

    The first connection must succeed (a wrong URL should fail fast); later failures are
    retried up to ``max_attempts`` times in a row, waiting ``base_delay * 2**n`` seconds
    (at most ``max_delay``, or the server's ``Retry-After``).

    Raises:
        ClientError: the first connect failed, reconnects ran out, the server refused or
            sent a fatal error, or ``stop`` came while disconnected.
        DeviceError: the capture failed (after the audio before it was transcribed).
    """
    live = _Live(url, params, on_event, stop, warn, Backlog(params.sample_rate * params.encoding.sample_width,
                                                           replay_seconds), stop_capture)
    pump_task = asyncio.create_task(live.pump(chunks))
    try:
        return await live.run(max_attempts, base_delay, max_delay)
    finally:
        stop_capture()
        pump_task.cancel()
        with suppress(asyncio.CancelledError):
            await pump_task  # re-raises a capture failure (DeviceError)
        if live.backlog.skipped_seconds:
            warn(f"{live.backlog.skipped_seconds:.1f} s of audio were never sent (replay buffer full)")


class _Live:
    """State of :func:`run_live` that outlives one connection: backlog, timeline, failures."""

    def __init__(
        self,
        url: str,
        params: ListenParams,
        on_event: Callable[[ServerMessage], None],
        stop: asyncio.Event,
        warn: Callable[[str], None],
        backlog: Backlog,
        stop_capture: Callable[[], None],
    ) -> None:
        self.url, self.params, self.on_event, self.stop, self.warn = url, params, on_event, stop, warn
        self.backlog = backlog
        self.stop_capture = stop_capture
        self.failures = 0
        self.offset = 0.0  # stream time where the current connection's audio starts
        self.segment_base = 0  # segment ids continue across connections
        self.next_segment = 0  # the id after the last final
        self.fatal: Error | None = None

    async def pump(self, chunks: AsyncIterator[bytes]) -> None:
        """Move captured chunks into the backlog, connected or not."""
        try:
            async for chunk in chunks:
                self.backlog.append(chunk)
        finally:
            self.backlog.end()

    async def run(self, max_attempts: int, base_delay: float, max_delay: float) -> Closed:
        connected = False
        while True:
            try:
                ws = await open_connection(self.url, self.params)
            except ClientError as exc:
                retryable = exc.code is ExitCode.UNREACHABLE or exc.retry_after is not None
                if not connected or not retryable or self.failures >= max_attempts:
                    raise
                reason, delay = str(exc), exc.retry_after
            else:
                connected = True
                closed, reason = await self._converse(ws)
                if closed is not None:
                    return closed
                if self.failures >= max_attempts:
                    raise ConnectionLost(f"{reason}; giving up after {max_attempts} reconnects")
                delay = None
            self.failures += 1
            delay = delay or min(max_delay, base_delay * 2 ** (self.failures - 1))
            self.warn(f"{reason}; reconnecting in {delay:.1f} s (attempt {self.failures}/{max_attempts}), "
                      f"keeping {self.backlog.kept_seconds:.1f} s of audio to replay")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                raise ClientError("stopped while disconnected; audio since the drop was not transcribed")

    async def _converse(self, ws: ClientConnection) -> tuple[Closed | None, str]:
        """One connection replaying from the backlog; (closed, "") or (None, why it ended)."""
        feed = BacklogFeed(self.backlog, self.stop_capture)
        self.offset, self.segment_base = feed.start_seconds, self.next_segment
        try:
            async with closing(ws):
                outcome = await converse(ws, feed, self._handle, self.stop, warn=self.warn)
            if outcome.eos_sent or self.stop.is_set():
                return outcome.closed, ""
            reason = f"server ended the session ({outcome.closed.reason})"
        except ConnectionLost as exc:
            reason = str(exc)
        if self.fatal is not None:  # the server said why it gave up; retrying would not help
            raise ClientError(f"server error ({self.fatal.code}): {self.fatal.message}")
        return None, reason

    def _handle(self, message: ServerMessage) -> None:
        shifted = shift_times(message, self.offset, self.segment_base)
        if isinstance(shifted, Error) and shifted.fatal:
            self.fatal = shifted
        if isinstance(shifted, Final):
            # Only a final advances the ids: a segment cut off by a drop is replayed by the
            # next connection and started again under the same id, so each id still gets
            # exactly one final and the ids of finals stay 0, 1, 2, ...
            self.next_segment = shifted.segment + 1
            self.backlog.commit(shifted.end)
            self.failures = 0  # the server is doing real work again
        self.on_event(shifted)
