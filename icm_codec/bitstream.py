"""The versioned, self-checking container for one coded layer of one frame.

A layer travels alone (edge -> cloud, cloud <- edge on demand), so it carries everything a
decoder needs to refuse it cleanly: the format version, the digest of the weights that coded
it, the digest of the base layer it refines, and a CRC-32 over every byte. The parser treats
its input as hostile: every failure is a :class:`~icm_codec.errors.BitstreamError` subclass
with a one-line message, and no allocation is sized by a field it has not checked.
Byte layout, limits and version policy: ``docs/bitstream.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
import zlib

from .errors import (
    BitstreamError,
    ChecksumError,
    HeaderError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .kinds import LayerKind

__all__ = [
    "DEFAULT_MAX_LAYER_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DIGEST_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_MODEL_ID",
    "MAX_SUBSTREAMS",
    "Layer",
    "LayerHeader",
    "LayerKind",
    "ParsedLayer",
    "layer_digest",
    "pack_layer",
    "parse_layer",
    "read_header",
    "unpack_layer",
]

FORMAT_VERSION = 1
MAGIC = b"ICMF"
DIGEST_BYTES = 16
MAX_MODEL_ID = 64
MAX_SLICES = 16
MAX_SUBSTREAMS = MAX_SLICES + 1
MAX_PAD_LOG2 = 8
MAX_DIMENSION = 0xFFFF
DEFAULT_MAX_LAYER_BYTES = 64 * 2**20
DEFAULT_MAX_PIXELS = 8192 * 8192

# magic | version | kind | flags | header length | model digest | parent | frame id |
# width | height | pad_log2 | n_slices  (offsets in docs/bitstream.md)
_FIXED = struct.Struct(f"<4sBBHH{DIGEST_BYTES}s{DIGEST_BYTES}sQHHBB")
FIXED_HEADER_BYTES = _FIXED.size  # 56
CHECKSUM_BYTES = 4
_CRC = struct.Struct("<I")
# fixed part + model_id length + 1-char id + substream count + 2 lengths (n_slices = 1)
MIN_HEADER_BYTES = FIXED_HEADER_BYTES + 1 + 1 + 1 + 4 * 2
MAX_HEADER_BYTES = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF
_ZERO_DIGEST = bytes(DIGEST_BYTES)


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise HeaderError(f"{name} must be bytes, not {type(value).__name__}")


def _as_int(value: object, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HeaderError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise HeaderError(f"{name} {value} is out of range {lo}..{hi}")
    return value


def _header_bytes(model_id_len: int, n_slices: int, extension_len: int) -> int:
    return FIXED_HEADER_BYTES + 1 + model_id_len + 1 + 4 * (n_slices + 1) + extension_len


@dataclasses.dataclass(frozen=True)
class LayerHeader:
    """Header of one layer; validated on construction so no invalid header can exist.

    ``extension`` holds header bytes a later, compatible writer appended after the fields
    version 1 knows; v1 writers leave it empty, and it is kept so re-packing is byte-exact.
    """

    kind: LayerKind
    model_id: str
    model_digest: bytes
    width: int
    height: int
    pad_log2: int
    n_slices: int
    parent: bytes
    frame_id: int = 0
    extension: bytes = b""

    def __post_init__(self) -> None:
        kind = self.kind
        if not isinstance(kind, LayerKind):
            if not isinstance(kind, int) or isinstance(kind, bool) or kind not in _KIND_VALUES:
                raise HeaderError(f"unknown layer kind {kind!r}")
            object.__setattr__(self, "kind", LayerKind(kind))
        mid = self.model_id
        if not isinstance(mid, str):
            raise HeaderError(f"model_id must be a str, not {type(mid).__name__}")
        if not 1 <= len(mid) <= MAX_MODEL_ID:
            raise HeaderError(f"model_id has {len(mid)} characters (1..{MAX_MODEL_ID} allowed)")
        if not all(" " <= c <= "~" for c in mid):
            raise HeaderError(f"model_id {mid!r} is not printable ASCII")
        for name in ("model_digest", "parent"):
            value = _as_bytes(getattr(self, name), name)
            if len(value) != DIGEST_BYTES:
                raise HeaderError(f"{name} has {len(value)} bytes, not {DIGEST_BYTES}")
            object.__setattr__(self, name, value)
        _as_int(self.width, "width", 1, MAX_DIMENSION)
        _as_int(self.height, "height", 1, MAX_DIMENSION)
        _as_int(self.pad_log2, "pad_log2", 0, MAX_PAD_LOG2)
        _as_int(self.n_slices, "n_slices", 1, MAX_SLICES)
        _as_int(self.frame_id, "frame_id", 0, _U64_MAX)
        ext = _as_bytes(self.extension, "extension")
        object.__setattr__(self, "extension", ext)
        size = _header_bytes(len(mid), self.n_slices, len(ext))
        if size > MAX_HEADER_BYTES:
            raise HeaderError(f"header would be {size} bytes (at most {MAX_HEADER_BYTES})")
        has_parent = self.parent != _ZERO_DIGEST
        if self.kind.needs_parent and not has_parent:
            raise HeaderError(f"a {self.kind.label} layer needs a parent base-layer "
                              "digest, but parent is all zero")
        if not self.kind.needs_parent and has_parent:
            raise HeaderError(f"a {self.kind.label} layer has no parent, but parent "
                              "is not all zero")

    @property
    def padded_width(self) -> int:
        """Width the codec actually codes: rounded up to a multiple of 2**pad_log2."""
        step = 1 << self.pad_log2
        return -(-self.width // step) * step

    @property
    def padded_height(self) -> int:
        """Height the codec actually codes: rounded up to a multiple of 2**pad_log2."""
        step = 1 << self.pad_log2
        return -(-self.height // step) * step


_KIND_VALUES = frozenset(k.value for k in LayerKind)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One coded layer: header plus entropy-coded strings [hyperprior z, slice 1..n]."""

    header: LayerHeader
    substreams: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.header, LayerHeader):
            raise HeaderError(f"header must be a LayerHeader, not {type(self.header).__name__}")
        if not isinstance(self.substreams, (tuple, list)):
            raise HeaderError("substreams must be a tuple of bytes")
        subs = tuple(_as_bytes(s, f"substream {i}") for i, s in enumerate(self.substreams))
        want = self.header.n_slices + 1
        if len(subs) != want:
            raise HeaderError(f"{len(subs)} substreams for {self.header.n_slices} slices "
                              f"(need {want}: z and one per slice)")
        for i, s in enumerate(subs):
            if len(s) > _U32_MAX:
                raise HeaderError(f"substream {i} has {len(s)} bytes (at most {_U32_MAX})")
        object.__setattr__(self, "substreams", subs)


@dataclasses.dataclass(frozen=True)
class ParsedLayer(Layer):
    """A received layer after its one parse (:func:`parse_layer`): the exact bytes ``data``,
    with the header and substreams they hold, checksum and header checks passed.

    Receivers parse once, where a layer arrives, and hand this object on, so nothing after
    them parses or checksums the same bytes again. Only :func:`parse_layer` makes one.
    """

    data: bytes

    @functools.cached_property
    def digest(self) -> bytes:
        """``layer_digest(data)``: what an enhancement layer refining it stores as parent."""
        return layer_digest(self.data)

    @property
    def layer(self) -> Layer:
        return Layer(self.header, self.substreams)


def layer_digest(data: bytes) -> bytes:
    """Identity of a layer's exact bytes; an enhancement layer names its base layer by it."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


def pack_layer(layer: Layer) -> bytes:
    """Serialise a layer; the header is (re)validated so a bad one fails here, not at decode.

    Decoder limits (``max_bytes``, ``max_pixels``) are not applied: they belong to the reader.
    """
    if not isinstance(layer, Layer):
        raise HeaderError(f"pack_layer needs a Layer, not {type(layer).__name__}")
    h = layer.header
    # Re-run the constructors' checks: cheap, and guards objects altered behind the dataclass.
    h = dataclasses.replace(h)
    subs = Layer(h, layer.substreams).substreams
    mid = h.model_id.encode("ascii")
    header_len = _header_bytes(len(mid), h.n_slices, len(h.extension))
    body = b"".join((
        _FIXED.pack(MAGIC, FORMAT_VERSION, h.kind, 0, header_len, h.model_digest, h.parent,
                    h.frame_id, h.width, h.height, h.pad_log2, h.n_slices),
        bytes((len(mid),)), mid,
        bytes((len(subs),)), struct.pack(f"<{len(subs)}I", *(len(s) for s in subs)),
        h.extension,
        *subs,
    ))
    return body + _CRC.pack(zlib.crc32(body))


def unpack_layer(data: bytes, *, max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Layer:
    """Parse and fully validate one layer; raises a BitstreamError subclass on any defect."""
    header, buf, spans = _parse(data, max_bytes, max_pixels)
    return Layer(header, tuple(buf[a:b] for a, b in spans))


def parse_layer(data: bytes | ParsedLayer, *, max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ParsedLayer:
    """Like :func:`unpack_layer`, keeping the bytes; a :class:`ParsedLayer` passes through
    (already checked: no second parse)."""
    if isinstance(data, ParsedLayer):
        return data
    header, buf, spans = _parse(data, max_bytes, max_pixels)
    return ParsedLayer(header, tuple(buf[a:b] for a, b in spans), buf)


def read_header(data: bytes, *, max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> LayerHeader:
    """The header alone (for ``icm info``), after the same checks as :func:`unpack_layer`."""
    return _parse(data, max_bytes, max_pixels)[0]


def _parse(data: bytes, max_bytes: int,
           max_pixels: int) -> tuple[LayerHeader, bytes, list[tuple[int, int]]]:
    """Validate ``data``; return the header, the bytes and each substream's (start, end)."""
    if isinstance(data, memoryview):
        size = data.nbytes
    elif isinstance(data, (bytes, bytearray)):
        size = len(data)
    else:
        raise TypeError(f"a layer is bytes, not {type(data).__name__}")
    # Size first: nothing below may cost more than the caller agreed to spend.
    if size > max_bytes:
        raise BitstreamError(f"layer is {size} bytes, over the limit of {max_bytes} bytes")
    buf = bytes(data)
    head = buf[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise BitstreamError(f"not an ICM layer: magic is {head.hex()}, expected {MAGIC.hex()}")
    if size > len(MAGIC):
        version = buf[len(MAGIC)]
        if version != FORMAT_VERSION:
            why = ("is newer than this decoder: upgrade icm_codec" if version > FORMAT_VERSION
                   else "does not exist")
            raise UnsupportedVersionError(f"layer format version {version} {why} (this "
                                          f"decoder reads version {FORMAT_VERSION})")
    need = FIXED_HEADER_BYTES + CHECKSUM_BYTES
    if size < need:
        raise TruncatedStreamError(
            f"layer truncated: {size} bytes, the fixed header and checksum alone need {need}")
    end = size - CHECKSUM_BYTES
    (stored,) = _CRC.unpack_from(buf, end)
    computed = zlib.crc32(memoryview(buf)[:end])
    if stored != computed:
        raise ChecksumError(f"layer checksum mismatch (stored {stored:08x}, computed "
                            f"{computed:08x}): the layer is corrupt or truncated")

    (_, _, kind, flags, header_len, model_digest, parent, frame_id, width, height, pad_log2,
     n_slices) = _FIXED.unpack_from(buf, 0)
    if flags:
        raise HeaderError(f"flags 0x{flags:04x} are set, but format version "
                          f"{FORMAT_VERSION} defines none")
    if kind not in _KIND_VALUES:
        raise HeaderError(f"unknown layer kind {kind}")
    if header_len < MIN_HEADER_BYTES:
        raise HeaderError(f"header length {header_len} is below the minimum {MIN_HEADER_BYTES}")
    if header_len > end:
        raise TruncatedStreamError(f"layer truncated: header length {header_len}, but only "
                                   f"{end} bytes precede the checksum")
    pos = FIXED_HEADER_BYTES
    id_len = buf[pos]
    pos += 1
    if not 1 <= id_len <= MAX_MODEL_ID:
        raise HeaderError(f"model_id length {id_len} is out of range 1..{MAX_MODEL_ID}")
    if pos + id_len + 1 > header_len:
        raise TruncatedStreamError(f"header truncated: model_id needs {id_len} bytes, "
                                   f"{header_len - pos} remain in the header")
    # latin-1 never fails to decode; LayerHeader rejects what is not printable ASCII.
    model_id = buf[pos : pos + id_len].decode("latin-1")
    pos += id_len
    if width * height > max_pixels:
        raise HeaderError(f"frame {width}x{height} has {width * height} pixels, over the "
                          f"limit of {max_pixels}")
    count = buf[pos]
    pos += 1
    if count > MAX_SUBSTREAMS:
        raise HeaderError(f"substream count {count} is over the maximum {MAX_SUBSTREAMS}")
    table_end = pos + 4 * count
    if table_end > header_len:
        raise TruncatedStreamError(f"header truncated: {count} substream lengths need "
                                   f"{4 * count} bytes, {header_len - pos} remain in the header")
    lengths = struct.unpack_from(f"<{count}I", buf, pos)
    header = LayerHeader(LayerKind(kind), model_id, model_digest, width, height, pad_log2,
                         n_slices, parent, frame_id, buf[table_end:header_len])
    if count != n_slices + 1:
        raise HeaderError(f"substream count {count} does not match n_slices {n_slices} "
                          f"(need {n_slices + 1})")
    spans = []
    pos = header_len
    for i, n in enumerate(lengths):
        if n > end - pos:
            raise TruncatedStreamError(
                f"layer truncated: substream {i} needs {n} bytes, {end - pos} remain")
        spans.append((pos, pos + n))
        pos += n
    if pos != end:
        raise HeaderError(f"{end - pos} trailing bytes after the last substream (substream "
                          f"lengths sum to {pos - header_len}, payload is {end - header_len})")
    return header, buf, spans
