"""Generated gRPC stubs of ``protos/icm/v1/icm.proto``: ``pb`` (messages), ``pb_grpc``
(services).

The build generates them into ``icm_rpc/_generated`` (``icm_rpc.build_stubs``, run by
``setup.py``'s ``build_py``), so a wheel carries them and an installed package only imports
them. In a source checkout they are git-ignored, made by the editable install, and made again
on import when missing or older than the ``.proto`` (:func:`icm_rpc.build_stubs.ensure_in_tree`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .build_stubs import PROTO_FILE, ensure_in_tree

__all__ = ["PROTO_FILE", "Undecodable", "lenient", "pb", "pb_grpc"]


class Undecodable:
    """Stands in for a request whose bytes do not parse, so that a server answers it with a
    status of its own choosing (INVALID_ARGUMENT) instead of gRPC's INTERNAL and a logged
    traceback per message."""

    def __init__(self, nbytes: int, error: str) -> None:
        self.nbytes = nbytes
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.nbytes} bytes: {self.error})"


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns :class:`Undecodable` instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, or anything a parser may raise
            return Undecodable(len(data), " ".join(str(e).split())[:200] or type(e).__name__)
    return parse


def _load() -> tuple[ModuleType, ModuleType]:
    ensure_in_tree()
    pkg = f"{__package__}._generated"
    try:
        return (importlib.import_module(f"{pkg}.icm_pb2"),
                importlib.import_module(f"{pkg}.icm_pb2_grpc"))
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith(pkg):
            raise
        raise RuntimeError("the gRPC stubs (icm_rpc._generated) are not installed: this "
                           "package was not built by its setup.py (pip install . builds "
                           "them)") from e


pb, pb_grpc = _load()
