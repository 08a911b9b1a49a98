"""Errors the analytics package raises on purpose (the ``icm`` tool prints them as one line)."""

from __future__ import annotations

from icm_codec.errors import ICMError

__all__ = ["AnalyticsError", "WeightsNotFoundError"]


class AnalyticsError(ICMError, ValueError):
    """Bad input to the analytics package: data, options or results that cannot be used."""


class WeightsNotFoundError(ICMError, FileNotFoundError):
    """No detector weights where the resolution rules look (and no download allowed)."""
