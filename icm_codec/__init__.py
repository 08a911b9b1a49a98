"""Scalable image coding for machines and humans (SA-ICM base + feature-fusion enhancement).

Public API::

    from icm_codec import ScalableCodec
    codec = ScalableCodec.load("base.icmpkg", "enhancement.icmpkg")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BitstreamError,
    ChecksumError,
    HeaderError,
    ICMError,
    LayerPairingError,
    ModelMismatchError,
    ModelPackageError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    from .api import ScalableCodec, frame_to_tensor, tensor_to_frame
    from .config import CodecConfig
    from .kinds import LayerKind
    from .models import LayerCodec, create_model
    from .package import ModelPackage, load_package, save_package
    from .refine import Refinement

# public name → its module, imported on first use: the modules that need no torch (errors,
# bitstream, the command table) stay cheap for the `icm` shell and the services' clients
_HOME = {
    "CodecConfig": "config",
    "LayerCodec": "models",
    "LayerKind": "kinds",
    "ModelPackage": "package",
    "Refinement": "refine",
    "ScalableCodec": "api",
    "create_model": "models",
    "frame_to_tensor": "api",
    "load_package": "package",
    "save_package": "package",
    "tensor_to_frame": "api",
}

__all__ = [
    "BitstreamError",
    "ChecksumError",
    "CodecConfig",
    "HeaderError",
    "ICMError",
    "LayerCodec",
    "LayerKind",
    "LayerPairingError",
    "ModelMismatchError",
    "ModelPackage",
    "ModelPackageError",
    "Refinement",
    "ScalableCodec",
    "TruncatedStreamError",
    "UnsupportedVersionError",
    "create_model",
    "frame_to_tensor",
    "load_package",
    "save_package",
    "tensor_to_frame",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
