"""``POST /v1/audio/transcriptions``: OpenAI's file transcription, as one more session of the server.

How this works
--------------
A request arrives complete (:mod:`server.transports.http` bounds and reads it). The
multipart form is parsed by werkzeug; its fields become
:class:`~server.wire.openai_audio.TranscriptionParams`; the ``file`` part is decoded by
the same :func:`~server.core.audio.decode_audio_file` as ``dgasr-transcribe`` (in a
worker thread: a long mp3 takes a moment); the samples go through
:func:`~server.service.files.transcribe_served`, a draft-free session whose finals are
batched with the live sessions' work. The answer is rendered by the wire module, or
streamed as server-sent events, one per final as it is ready.

The request holds one session slot from decoding to answer (503 with ``Retry-After``
when the server is full), and the decoded audio is bounded by ``MAX_FILE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from werkzeug.formparser import parse_form_data

from server.core.audio import BadAudio, decode_audio_file
from server.core.events import Final
from server.service.files import FileResult, file_session, transcribe_served
from server.transports.http import HttpRequest, HttpResponse, HttpStream, json_response
from server.wire.openai_audio import (
    TranscriptionError,
    TranscriptionParams,
    error_body,
    render,
    sse_delta,
    sse_done,
)

if TYPE_CHECKING:
    from server.transports.server import DgasrServer

__all__ = ["FileEndpoint", "MAX_FILE_SECONDS"]

log = logging.getLogger("dgasr.files")

PROTOCOL = "openai_files"  # the metrics' protocol label
MAX_FILE_SECONDS = 2 * 3600.0  # decoded: 2 h of 16 kHz float32 is 460 MB, the most one request may hold


def _fail(exc: TranscriptionError) -> HttpResponse:
    return json_response(exc.status, exc.body())


class FileEndpoint:
    """The file transcription route of one :class:`DgasrServer`."""

    def __init__(self, server: DgasrServer) -> None:
        self.server = server

    async def transcriptions(self, request: HttpRequest) -> HttpResponse | HttpStream:
        server = self.server
        if server.stopping or not server.engine.ready:
            reason = "server is shutting down" if server.stopping else "model is still loading"
            return json_response(503, error_body(reason, kind="server_error"), (("Retry-After", "5"),))
        try:
            params, upload = self._form(request)
            audio = await asyncio.to_thread(self._decode, upload)
        except TranscriptionError as exc:
            log.info("transcription request from %s refused: %s", request.peer, exc)
            return _fail(exc)
        if not server.admission.start_session():
            message = f"server is full ({server.config.max_sessions} sessions)"
            return json_response(503, error_body(message, kind="server_error"), (("Retry-After", "2"),))
        session = file_session(server.session_config(), params.language)
        log.info("file %s from %s: %.1f s of audio, format %s%s", session.id, request.peer, len(audio) / 16000,
                 params.response_format.value, " (stream)" if params.stream else "")
        if params.stream:
            return HttpStream(200, self._events(session, audio))
        try:
            result = await transcribe_served(session, audio, server.registry, server.loop,
                                             metrics=server.metrics.protocol(PROTOCOL))
        finally:
            server.admission.end_session()
        if result.problems:
            return json_response(500, error_body(result.problems[0].message, kind="server_error"))
        content_type, body = render(params, result.finals, result.duration, params.language)
        return HttpResponse(200, body.encode(), content_type)

    @staticmethod
    def _form(request: HttpRequest) -> tuple[TranscriptionParams, object]:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise TranscriptionError("the body must be multipart/form-data with a file field", "file")
        environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(request.body)),
                   "wsgi.input": io.BytesIO(request.body)}
        _, form, files = parse_form_data(environ, max_form_parts=64)
        params = TranscriptionParams.from_form({key: form.getlist(key) for key in form})
        upload = files.get("file")
        if upload is None:
            raise TranscriptionError("you must provide a file (the multipart field 'file')", "file", code=None)
        return params, upload

    @staticmethod
    def _decode(upload):
        name = upload.filename or "upload"
        try:
            audio = decode_audio_file(upload.stream, name, max_seconds=MAX_FILE_SECONDS)
        except BadAudio as exc:
            raise TranscriptionError(f"{exc}; send wav, flac, ogg or mp3", "file", code="invalid_audio") from None
        if not len(audio):
            raise TranscriptionError(f"{name} holds no audio samples", "file", code="invalid_audio")
        return audio

    async def _events(self, session, audio) -> AsyncIterator[bytes]:
        """Server-sent events: a delta per final as it is ready, then ``done``.

        The queue holds finals not yet written; it is bounded by the file's segment count
        (itself bounded by ``MAX_FILE_SECONDS``), and finals are never dropped.
        """
        queue: asyncio.Queue[Final | FileResult | BaseException] = asyncio.Queue()

        async def run() -> None:
            try:
                queue.put_nowait(await transcribe_served(session, audio, self.server.registry, self.server.loop,
                                                         on_final=queue.put_nowait,
                                                         metrics=self.server.metrics.protocol(PROTOCOL)))
            except BaseException as exc:  # noqa: BLE001 - handed to the writer, which ends the stream
                queue.put_nowait(exc)
                raise
            finally:
                self.server.admission.end_session()

        task = asyncio.create_task(run(), name=f"{session.id}-stream")
        finals: list[Final] = []
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Final):
                    chunk = sse_delta(item, first=not any(f.text for f in finals))
                    finals.append(item)
                    if chunk:
                        yield chunk
                elif isinstance(item, FileResult):
                    yield sse_done(item.finals)
                    return
                else:
                    return
        finally:
            if not task.done():  # the client stopped reading the stream: nobody waits for the rest
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
