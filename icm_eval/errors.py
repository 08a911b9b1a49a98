"""Errors the evaluation package raises on purpose (the ``icm`` tool prints them as one line)."""

from __future__ import annotations

from icm_codec.errors import ICMError

__all__ = ["EvalError"]


class EvalError(ICMError, ValueError):
    """Bad input to an evaluation: images, packages or options that cannot be used."""
