"""Stop a training run the way Ctrl-C does, whatever signal asks.

A trainer started in the background by a non-interactive shell inherits SIGINT *ignored*, and
SIGTERM (what ``kill``, a container runtime or a session's end sends) kills Python without a
word: both lost every step since the last checkpoint. Inside :func:`stop_signals_interrupt` both
raise ``KeyboardInterrupt``, which the trainer turns into a checkpoint and an export.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["stop_signals_interrupt"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` while inside; the previous handlers come
    back after. Off the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.default_int_handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
