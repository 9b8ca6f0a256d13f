"""The caption page: ``GET /`` and its three static files, served from the package (no CDN).

The files live in ``server/web/`` (installed with the package); each is read once and
kept in memory, with a strong ``ETag`` so a kiosk that reloads gets ``304`` answers.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from server.transports.http import HttpRequest, HttpResponse, json_response

__all__ = ["Page"]

FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "worklet.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


class Page:
    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        for name in FILES:
            body = resources.files("server.web").joinpath(name).read_bytes()
            self._files[name] = (body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    async def index(self, request: HttpRequest) -> HttpResponse:
        return self._serve(request, "index.html")

    async def static(self, request: HttpRequest, name: str) -> HttpResponse:
        if name not in self._files:
            return json_response(404, {"error": "not_found", "message": f"no file {name[:80]}"})
        return self._serve(request, name)

    def _serve(self, request: HttpRequest, name: str) -> HttpResponse:
        body, etag = self._files[name]
        headers = (("ETag", etag), ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"))
        if request.headers.get("if-none-match") == etag:
            return HttpResponse(304, b"", FILES[name], headers)
        return HttpResponse(200, body, FILES[name], headers)
