"""Wire codecs, one module per protocol: ``v1`` (native), ``deepgram`` (Deepgram live)."""

__all__ = ["BadFrame"]


class BadFrame(ValueError):
    """A client frame a protocol cannot read; the message says why (already cut to size)."""
