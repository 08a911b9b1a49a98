"""``.icm`` files: the layers of one frame stored together (what ``icm encode`` writes).

Layout: magic ``ICMC`` | version u8 | layer count u8 | for each layer: length u32 LE + the
layer bytes (each layer is a self-checking container, see docs/bitstream.md).
"""

from __future__ import annotations

import struct

from .bitstream import DEFAULT_MAX_LAYER_BYTES
from .errors import BitstreamError, TruncatedStreamError, UnsupportedVersionError

__all__ = ["pack_frame_file", "unpack_frame_file"]

FILE_MAGIC = b"ICMC"
FILE_VERSION = 1
MAX_LAYERS = 8


def pack_frame_file(layers: list[bytes]) -> bytes:
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"a frame file holds 1..{MAX_LAYERS} layers")
    parts = [FILE_MAGIC, struct.pack("<BB", FILE_VERSION, len(layers))]
    for lay in layers:
        parts += [struct.pack("<I", len(lay)), lay]
    return b"".join(parts)


def unpack_frame_file(data: bytes) -> list[bytes]:
    """Split a frame file into layer byte strings (each still to be parsed)."""
    if len(data) < 6:
        raise TruncatedStreamError(f"frame file too short ({len(data)} bytes)")
    if data[:4] != FILE_MAGIC:
        raise BitstreamError("not an .icm frame file (bad magic)")
    version, count = data[4], data[5]
    if version != FILE_VERSION:
        raise UnsupportedVersionError(f"frame file version {version} is not supported "
                                      f"(this decoder reads version {FILE_VERSION})")
    if not 1 <= count <= MAX_LAYERS:
        raise BitstreamError(f"frame file announces {count} layers (1..{MAX_LAYERS} allowed)")
    pos, out = 6, []
    for i in range(count):
        if pos + 4 > len(data):
            raise TruncatedStreamError(f"frame file truncated before layer {i + 1}")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > DEFAULT_MAX_LAYER_BYTES:
            raise BitstreamError(f"layer {i + 1} announces {n} bytes, over the limit")
        if pos + n > len(data):
            raise TruncatedStreamError(
                f"frame file truncated: layer {i + 1} needs {n} bytes, {len(data) - pos} remain")
        out.append(bytes(data[pos : pos + n]))
        pos += n
    if pos != len(data):
        raise BitstreamError(f"{len(data) - pos} trailing bytes after the last layer")
    return out
