"""Who may use the server: one shared token, checked in constant time, never logged.

How this works
--------------
With a token configured (``--auth-token``, ``--auth-token-file`` or ``DGASR_AUTH_TOKEN``),
every endpoint but the health checks and the caption page's files requires it, in any of the forms clients can send:

- ``Authorization: Bearer TOKEN``: the OpenAI SDKs' ``api_key``, curl, most tools;
- ``Authorization: Token TOKEN``: the Deepgram SDK's ``api_key``;
- ``?token=TOKEN`` in the URL: browsers, which cannot set headers on a websocket.

The transports call :meth:`Access.allows` before a websocket upgrade or before an HTTP
body is read, and answer 401 otherwise. The token never reaches a log line: request
paths are logged without their query, and the ``token`` parameter is removed from the
query before any protocol parses it (:func:`strip_token`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

__all__ = ["OPEN_PATHS", "TOKEN_PARAM", "Access", "read_token", "strip_token"]

TOKEN_PARAM = "token"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})  # probes carry no secrets; the page holds none
OPEN_PREFIXES = ("/static/",)  # the page's own files: it asks for the token, the websocket checks it
SCHEMES = ("bearer", "token")


def read_token(value: str | None, path: str | None) -> str | None:
    """The configured token: ``value``, else the first line of the file at ``path``; ValueError if empty."""
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").splitlines()[0] if Path(path).stat().st_size else ""
        except OSError as exc:
            raise ValueError(f"cannot read the auth token file {path}: {exc.strerror or exc}") from None
        if not value.strip():
            raise ValueError(f"the auth token file {path} is empty")
    if value is not None and not value.strip():
        raise ValueError("the auth token is empty")
    return value.strip() if value is not None else None


def strip_token(query: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """``query`` without its ``token`` parameter, and that token."""
    rest = dict(query)
    return rest, rest.pop(TOKEN_PARAM, None)


class Access:
    """The server's token check (``token=None``: everyone is allowed)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, path: str, authorization: str | None, query_token: str | None) -> bool:
        if self._token is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        offered = None
        if authorization:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() in SCHEMES:
                offered = credential.strip()
        if offered is None:
            offered = query_token
        # compare_digest: the time taken does not tell how much of a guess was right
        return offered is not None and hmac.compare_digest(offered.encode(), self._token)

    def allows_headers(self, path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        return self.allows(path, headers.get("authorization") or headers.get("Authorization"), query.get(TOKEN_PARAM))
