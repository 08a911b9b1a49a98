"""Secrets out of logs and error messages: database and camera URLs carry passwords
(``postgresql://user:pw@host/db``, ``rtsp://user:pw@camera/stream``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["redact_url", "url_secrets"]

_SECRET_PARAMS = ("password", "passwd", "pwd", "token", "key")


def redact_url(url: str) -> str:
    """``url`` with its password (user info, or a ``password=``-like parameter) replaced by
    ``***``; other text comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(f"{k}=***" if k.lower() in _SECRET_PARAMS else f"{k}={v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` (to scrub them from text that quotes them)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS and v]
    return found
