"""Scalable image coding for machines and humans (SA-ICM base + feature-fusion enhancement).

Public API::

    from icm_codec import ScalableCodec
    codec = ScalableCodec.load("base.icmpkg", "enhancement.icmpkg")
"""

from .api import ScalableCodec, frame_to_tensor, tensor_to_frame
from .config import CodecConfig
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
from .models import LayerCodec, create_model
from .package import ModelPackage, load_package, save_package

__all__ = [
    "BitstreamError",
    "ChecksumError",
    "CodecConfig",
    "HeaderError",
    "ICMError",
    "LayerCodec",
    "LayerPairingError",
    "ModelMismatchError",
    "ModelPackage",
    "ModelPackageError",
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
