"""Exception hierarchy of the codec library (typed errors, never crashes)."""


class ICMError(Exception):
    """Root of all errors the codec library raises on purpose."""


class BitstreamError(ICMError, ValueError):
    """A byte string is not a valid layer (never a crash)."""


class TruncatedStreamError(BitstreamError):
    """The layer ends before a field or substream it announces."""


class ChecksumError(BitstreamError):
    """The layer's CRC-32 does not match its bytes."""


class UnsupportedVersionError(BitstreamError):
    """The layer uses a format version this decoder does not know."""


class HeaderError(BitstreamError):
    """A header field is out of range or inconsistent."""


class ModelMismatchError(ICMError, ValueError):
    """The layer was coded by other weights than the loaded model."""


class LayerPairingError(ICMError, ValueError):
    """An enhancement layer was paired with the wrong base layer."""


class ModelPackageError(ICMError, ValueError):
    """A model package file is invalid or its digest does not match."""
