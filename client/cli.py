"""``dgasr-client``: stream a file, raw stdin PCM or a microphone to a dgasr server.

How this works
--------------
:func:`main` parses the arguments, opens the audio source (errors here cost no
connection), picks the output sink, and runs :func:`_run` under ``asyncio.run``.
A file or stdin uses one connection: send everything, then ``eos``, print events until
``closed``. ``--mic`` uses :func:`client.session.run_live`, which reconnects with backoff
and replays the audio captured meanwhile. The first Ctrl-C (or SIGTERM) stops the input
and sends ``eos``; the remaining finals are awaited for at most 10 s and written; a
second Ctrl-C quits at once. Output files are complete and valid either way, because
every sink writes whole lines/cues and flushes.

Transcripts go to stdout (or ``--output``); warnings and errors go to stderr as single
lines starting with ``dgasr-client:``.

Exit codes
----------
0   success (also after Ctrl-C once the server finished)
1   server refused the connection (HTTP 400/503/...), sent a fatal error, or the
    connection was lost for good
2   usage error or unreadable input (bad file, bad --rate)
3   audio device error (PortAudio missing, no input device, capture failed)
4   server unreachable (connection refused, unknown host, handshake timeout)
130 interrupted twice: stopped without waiting for the last finals
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
from contextlib import suppress
from typing import TextIO

from server.core.audio import RAW_SUFFIXES
from server.wire.v1 import (
    LANGUAGES,
    Closed,
    Encoding,
    Error,
    ListenParams,
    ParamError,
    Ready,
    ServerMessage,
)

from .feeds import IteratorFeed
from .mic import MicSource, list_input_devices
from .output import FORMATS, Sink, make_sink
from .session import ClientError, ExitCode, closing, converse, open_connection, run_live
from .sources import DeviceError, FileSource, SourceError, StdinSource

__all__ = ["main", "build_parser"]

PROG = "dgasr-client"
DEFAULT_URL = "ws://127.0.0.1:8765"

EPILOG = """\
examples:
  dgasr-client talk.wav                      transcribe a file, one line per final
  dgasr-client --mic                         live captions from the default microphone
  dgasr-client --format srt -o talk.srt talk.flac
  dgasr-client --mic --room standup --speaker alice   speak into a meeting room
  arecord -f S16_LE -r 16000 -c 1 -t raw | dgasr-client --rate 16000 -

exit codes:
  0    success (also after Ctrl-C once the server finished)
  1    server refused the connection, sent a fatal error, or the connection was lost
  2    usage error or unreadable input
  3    audio device error (no PortAudio, no input device)
  4    server unreachable
  130  Ctrl-C twice: stopped without waiting for the last finals
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] (FILE | - | --mic | --list-devices)",
        description="Stream audio to a dgasr server and print the transcript as it is recognised.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", metavar="FILE | -",
                   help="audio file (wav, flac, ogg, anything libsndfile reads), or - for raw mono PCM on stdin")
    p.add_argument("--mic", action="store_true", help="capture from a microphone (see --device)")
    p.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    p.add_argument("--url", default=os.environ.get("DGASR_URL", DEFAULT_URL),
                   help="server address, ws://HOST:PORT (default: $DGASR_URL or %(default)s)")
    p.add_argument("--language", choices=(*LANGUAGES, "auto"), default="auto",
                   help="spoken language; auto lets the server detect it (default: auto)")
    p.add_argument("--draft-steps", type=int, metavar="N", help="diffusion steps for partials (default: the server's)")
    p.add_argument("--final-steps", type=int, metavar="N", help="diffusion steps for finals (default: the server's)")
    p.add_argument("--room", metavar="NAME", help="publish into this meeting room (readers: /v1/rooms/NAME)")
    p.add_argument("--speaker", metavar="LABEL", help="your label in the room (with --room)")
    p.add_argument("--no-interim", action="store_true",
                   help="do not ask for partial results (text, srt and vtt never ask for them anyway)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="live: captions redrawn in place; text: one line per final; jsonl: every server event; "
                        "srt/vtt: subtitles (default: live on a terminal, text otherwise)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the transcript to FILE instead of stdout")
    p.add_argument("--realtime", action="store_true",
                   help="send file or stdin audio at real-time speed, as a microphone would")
    p.add_argument("--rate", type=int, metavar="HZ",
                   help="sample rate of raw PCM: stdin, or headerless .raw/.pcm/.s16 files (default: 16000)")
    p.add_argument("--encoding", choices=[e.value for e in Encoding], default=Encoding.PCM_S16LE.value,
                   help="sample format of raw stdin PCM, and the format sent to the server (default: %(default)s)")
    p.add_argument("--device", metavar="NAME|INDEX", help="microphone to use (default: the system default input)")
    p.add_argument("--chunk-ms", type=int, default=100, metavar="MS",
                   help="audio per websocket frame, 10-1000 ms (default: %(default)s)")
    p.add_argument("--max-reconnects", type=int, default=5, metavar="N",
                   help="with --mic: reconnect attempts in a row before giving up (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="report the session (model, steps, totals) on stderr")
    return p


class _Console:
    """stderr notices that first take the live partial off the terminal."""

    def __init__(self, sink: Sink | None = None, verbose: bool = False) -> None:
        self.sink = sink
        self.verbose = verbose

    def warn(self, text: str) -> None:
        if self.sink is not None:
            self.sink.clear()
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def info(self, text: str) -> None:
        if self.verbose:
            self.warn(text)


def _params(args: argparse.Namespace, fmt: str, sample_rate: int, encoding: Encoding) -> ListenParams:
    query = {"sample_rate": str(sample_rate), "encoding": encoding.value, "language": args.language,
             # Partials are only worth the server's time when someone looks at them.
             "interim_results": "true" if fmt in ("live", "jsonl") and not args.no_interim else "false"}
    for name in ("draft_steps", "final_steps", "room", "speaker"):
        if getattr(args, name) is not None:
            query[name] = str(getattr(args, name))
    return ListenParams.from_query(query)


def _open_source(args: argparse.Namespace, console: _Console) -> FileSource | StdinSource | MicSource:
    encoding = Encoding(args.encoding)
    if args.mic:
        device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
        return MicSource(device, chunk_ms=args.chunk_ms, encoding=encoding, on_overflow=console.warn)
    if args.input == "-":
        return StdinSource(sample_rate=args.rate or 16000, encoding=encoding, chunk_ms=args.chunk_ms,
                           realtime=args.realtime)
    return FileSource(args.input, chunk_ms=args.chunk_ms, encoding=encoding, realtime=args.realtime,
                      raw_rate=args.rate or 16000)


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.list_devices:
        return
    if args.mic == (args.input is not None):
        parser.error("give exactly one input: FILE, - (stdin) or --mic")
    if args.rate is not None and args.input != "-" and not str(args.input).lower().endswith(RAW_SUFFIXES):
        parser.error("--rate only applies to raw PCM (stdin -, or .raw/.pcm/.s16 files); "
                     "other files and microphones declare their own rate")
    if args.realtime and args.mic:
        parser.error("--realtime is for file or stdin input; a microphone is real time already")
    if args.device is not None and not args.mic:
        parser.error("--device needs --mic")
    if not 10 <= args.chunk_ms <= 1000:
        parser.error("--chunk-ms must be between 10 and 1000")
    if args.max_reconnects < 0:
        parser.error("--max-reconnects must be 0 or more")


def _list_devices() -> int:
    try:
        devices = list_input_devices()
    except DeviceError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return ExitCode.DEVICE
    for d in devices:
        mark = "  (default)" if d.is_default else ""
        print(f"{d.index:3d}  {d.name}  [{d.channels} ch, {d.default_samplerate:g} Hz]{mark}")
    return ExitCode.OK


def _source_failed(console: _Console, exc: SourceError) -> int:
    """One line for a failed audio source; a device problem and bad input exit differently."""
    console.warn(str(exc))
    return ExitCode.DEVICE if isinstance(exc, DeviceError) else ExitCode.USAGE


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    if args.list_devices:
        return _list_devices()
    console = _Console(verbose=args.verbose)
    try:
        source = _open_source(args, console)
    except SourceError as exc:
        return _source_failed(console, exc)
    out: TextIO = sys.stdout
    if args.output:
        try:
            out = open(args.output, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
        except OSError as exc:
            console.warn(f"cannot write {args.output!r}: {exc.strerror or exc}")
            return ExitCode.USAGE
    sink: Sink | None = None
    try:
        tty = out.isatty()
        fmt = args.format or ("live" if tty else "text")
        try:
            params = _params(args, fmt, source.format.sample_rate, source.format.encoding)
        except ParamError as exc:
            console.warn(f"--{exc.field.replace('_', '-')}: {exc.message}")
            return ExitCode.USAGE
        sink = make_sink(fmt, out, tty=tty, dim="NO_COLOR" not in os.environ,
                         columns=lambda: shutil.get_terminal_size().columns)
        console.sink = sink
        return asyncio.run(_run(args, source, sink, params, console))
    except KeyboardInterrupt:  # Ctrl-C before the loop's handler was installed (or on Windows)
        return ExitCode.ABORTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback.
        with suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return ExitCode.OK
    finally:
        if sink is not None:
            with suppress(BrokenPipeError):
                sink.close()
        if out is not sys.stdout:
            out.close()


async def _run(
    args: argparse.Namespace,
    source: FileSource | StdinSource | MicSource,
    sink: Sink,
    params: ListenParams,
    console: _Console,
) -> int:
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    aborted = False

    def on_signal() -> None:
        nonlocal aborted
        if not stop.is_set():
            console.warn("stopping: waiting up to 10 s for the last results (Ctrl-C again to quit now)")
            stop.set()
        elif main_task is not None:
            aborted = True
            main_task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):  # Windows, or not the main thread
            loop.add_signal_handler(sig, on_signal)
    fatal: list[Error] = []

    def on_event(message: ServerMessage) -> None:
        if isinstance(message, Error):
            if message.fatal:
                fatal.append(message)  # reported once, as the exit message
            else:
                console.warn(f"server: {message.code}: {message.message}")
        elif isinstance(message, Ready):
            console.info(f"connected: session {message.session_id}, model {message.model}, "
                         f"{message.sample_rate} Hz {message.encoding}, steps {message.draft_steps}/{message.final_steps}")
        elif isinstance(message, Closed):
            console.info(f"closed ({message.reason}): {message.segments} segments, {message.audio_seconds:.1f} s of audio")
        sink.handle(message)

    try:
        if isinstance(source, MicSource):
            source.start()
            await run_live(args.url, params, source.chunks(), source.stop, on_event, stop,
                           warn=console.warn, max_attempts=args.max_reconnects)
        else:
            async with closing(await open_connection(args.url, params)) as ws:
                outcome = await converse(ws, IteratorFeed(source.chunks()), on_event, stop, warn=console.warn)
            if not outcome.eos_sent and not fatal:
                console.warn(f"server ended the session before the input did ({outcome.closed.reason})")
                return ExitCode.SERVER
    except asyncio.CancelledError:
        if not aborted:
            raise
        console.warn("interrupted; the last results were not received")
        return ExitCode.ABORTED
    except SourceError as exc:
        return _source_failed(console, exc)
    except ClientError as exc:
        console.warn(_fatal_text(fatal) or str(exc))
        return exc.code if not fatal else ExitCode.SERVER
    finally:
        if isinstance(source, MicSource):
            source.stop()
    if fatal:
        console.warn(_fatal_text(fatal))
        return ExitCode.SERVER
    return ExitCode.OK


def _fatal_text(fatal: list[Error]) -> str:
    return f"server error ({fatal[0].code}): {fatal[0].message}" if fatal else ""
