"""The layer container: exact round trips, documented layout, and a parser that never crashes.

Every byte a parser sees may be hostile, so besides round trips this fuzzes the parser with
random bytes and mutated layers (with and without a recomputed checksum, so mutations also
reach the field checks behind the CRC): each input is either refused with a BitstreamError
subclass carrying a one-line message, or it parses to a layer that re-packs to the same bytes.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icm_codec.bitstream import (
    DEFAULT_MAX_LAYER_BYTES,
    DEFAULT_MAX_PIXELS,
    DIGEST_BYTES,
    FORMAT_VERSION,
    MAGIC,
    MAX_MODEL_ID,
    MAX_SUBSTREAMS,
    Layer,
    LayerHeader,
    LayerKind,
    layer_digest,
    pack_layer,
    read_header,
    unpack_layer,
)
from icm_codec.errors import (
    BitstreamError,
    ChecksumError,
    HeaderError,
    ICMError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

REPO = Path(__file__).resolve().parent.parent
ALL_PIXELS = 0xFFFF * 0xFFFF  # lifts the pixel limit so any valid header parses


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Documented offsets (docs/bitstream.md); the layout test pins them.
OFF_VERSION, OFF_KIND, OFF_FLAGS, OFF_HLEN = 4, 5, 6, 8
OFF_DIGEST, OFF_PARENT, OFF_FRAME, OFF_W, OFF_H, OFF_PAD, OFF_SLICES, OFF_IDLEN = (
    10, 26, 42, 50, 52, 54, 55, 56)


# -- helpers ----------------------------------------------------------------------------------
def make_header(kind: LayerKind = LayerKind.BASE, **kw: object) -> LayerHeader:
    fields: dict[str, object] = dict(
        kind=kind, model_id="base-lite", model_digest=hashlib.sha256(b"weights").digest()[:16],
        width=3, height=2, pad_log2=6, n_slices=2,
        parent=b"\x11" * 16 if kind in (LayerKind.ENHANCEMENT, LayerKind.RESIDUAL) else bytes(16),
        frame_id=7)
    fields.update(kw)
    return LayerHeader(**fields)  # type: ignore[arg-type]


def make_layer(kind: LayerKind = LayerKind.BASE, **kw: object) -> Layer:
    h = make_header(kind, **kw)
    subs = tuple(bytes([i]) * (i + 1) for i in range(h.n_slices + 1))
    return Layer(h, subs)


def doc_example() -> bytes:
    """The worked example in docs/bitstream.md."""
    h = LayerHeader(kind=LayerKind.BASE, model_id="base-lite",
                    model_digest=hashlib.sha256(b"example weights").digest()[:DIGEST_BYTES],
                    width=3, height=2, pad_log2=6, n_slices=1, parent=bytes(DIGEST_BYTES),
                    frame_id=7)
    return pack_layer(Layer(h, (b"\x01\x02", b"\xaa\xbb\xcc")))


def recrc(body: bytes) -> bytes:
    """Append a fresh CRC so a forged/mutated body gets past the checksum."""
    return body + struct.pack("<I", zlib.crc32(body))


def forge(data: bytes, fn: Callable[[bytearray], object]) -> bytes:
    body = bytearray(data[:-4])
    fn(body)
    return recrc(bytes(body))


def check_clean(data: bytes, **kw: int) -> Layer | None:
    """Refused with a one-line BitstreamError, or parses and re-packs to the same bytes."""
    kw.setdefault("max_pixels", ALL_PIXELS)
    try:
        layer = unpack_layer(data, **kw)
    except BitstreamError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        with pytest.raises(type(e)):
            read_header(data, **kw)
        return None
    assert pack_layer(layer) == data
    assert read_header(data, **kw) == layer.header
    return layer


def rejects(exc: type[BitstreamError], data: bytes, match: str | None = None,
            **kw: int) -> None:
    with pytest.raises(exc, match=match):
        unpack_layer(data, **kw)
    with pytest.raises(exc, match=match):
        read_header(data, **kw)


# -- strategies -------------------------------------------------------------------------------
digests = st.binary(min_size=DIGEST_BYTES, max_size=DIGEST_BYTES)
model_ids = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                    min_size=1, max_size=MAX_MODEL_ID)


@st.composite
def layers(draw: st.DrawFn) -> Layer:
    kind = draw(st.sampled_from(LayerKind))
    parent = draw(digests.filter(any)) if kind.needs_parent else bytes(DIGEST_BYTES)
    n = draw(st.integers(1, MAX_SUBSTREAMS - 1))
    h = LayerHeader(
        kind=kind, model_id=draw(model_ids), model_digest=draw(digests),
        width=draw(st.integers(1, 0xFFFF)), height=draw(st.integers(1, 0xFFFF)),
        pad_log2=draw(st.integers(0, 8)), n_slices=n, parent=parent,
        frame_id=draw(st.integers(0, 2**64 - 1)),
        extension=draw(st.one_of(st.just(b""), st.binary(max_size=8))))
    subs = draw(st.lists(st.binary(max_size=40), min_size=n + 1, max_size=n + 1))
    return Layer(h, tuple(subs))


# -- round trips and layout -------------------------------------------------------------------
@fast(300)
@given(layers())
def test_round_trip(layer: Layer) -> None:
    data = pack_layer(layer)
    assert unpack_layer(data, max_pixels=ALL_PIXELS) == layer
    assert read_header(data, max_pixels=ALL_PIXELS) == layer.header
    assert check_clean(data) == layer
    assert layer_digest(data) == hashlib.sha256(data).digest()[:DIGEST_BYTES]
    assert len(data) == (56 + 1 + len(layer.header.model_id) + 1 + 4 * len(layer.substreams)
                         + len(layer.header.extension) + sum(map(len, layer.substreams)) + 4)


def test_zero_length_substreams_round_trip() -> None:
    layer = Layer(make_header(n_slices=16), (b"",) * 17)
    assert unpack_layer(pack_layer(layer)) == layer


def test_layout_matches_documented_offsets() -> None:
    layer = make_layer(LayerKind.ENHANCEMENT, frame_id=0x0102030405060708, width=640,
                       height=480, pad_log2=6, n_slices=2)
    h = layer.header
    d = pack_layer(layer)
    idlen = len(h.model_id)
    assert d[:4] == MAGIC == b"ICMF"
    assert d[OFF_VERSION] == FORMAT_VERSION
    assert d[OFF_KIND] == LayerKind.ENHANCEMENT
    assert d[OFF_FLAGS : OFF_FLAGS + 2] == b"\0\0"
    hlen = struct.unpack_from("<H", d, OFF_HLEN)[0]
    assert hlen == 56 + 1 + idlen + 1 + 4 * 3
    assert d[OFF_DIGEST : OFF_DIGEST + 16] == h.model_digest
    assert d[OFF_PARENT : OFF_PARENT + 16] == h.parent
    assert struct.unpack_from("<Q", d, OFF_FRAME)[0] == h.frame_id
    assert struct.unpack_from("<HHBB", d, OFF_W) == (640, 480, 6, 2)
    assert d[OFF_IDLEN] == idlen
    assert d[OFF_IDLEN + 1 : OFF_IDLEN + 1 + idlen] == h.model_id.encode()
    pos = OFF_IDLEN + 1 + idlen
    assert d[pos] == 3
    assert struct.unpack_from("<3I", d, pos + 1) == (1, 2, 3)
    assert d[hlen:-4] == b"".join(layer.substreams)
    assert struct.unpack("<I", d[-4:])[0] == zlib.crc32(d[:-4])


def test_padded_size() -> None:
    h = make_header(width=641, height=480, pad_log2=6)
    assert (h.padded_width, h.padded_height) == (704, 512)
    h = make_header(width=5, height=7, pad_log2=0)
    assert (h.padded_width, h.padded_height) == (5, 7)


def test_docs_worked_example_is_current() -> None:
    doc = (REPO / "docs" / "bitstream.md").read_text()
    data = doc_example()
    assert data.hex() in doc
    assert layer_digest(data).hex() in doc


def test_bytes_like_input() -> None:
    data = pack_layer(make_layer())
    assert unpack_layer(bytearray(data)) == unpack_layer(memoryview(data)) == unpack_layer(data)
    with pytest.raises(TypeError):
        unpack_layer("ICMF")  # type: ignore[arg-type]


def test_kind_coerced_and_errors_are_value_errors() -> None:
    h = make_header(kind=1, parent=b"\1" * 16)  # type: ignore[arg-type]
    assert h.kind is LayerKind.ENHANCEMENT
    assert issubclass(BitstreamError, ICMError) and issubclass(BitstreamError, ValueError)


def test_parser_uses_no_assert() -> None:
    """`python -O` strips asserts, so validation must never rely on them."""
    tree = ast.parse((REPO / "icm_codec" / "bitstream.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Assert)]


# -- header validation on the writer side -----------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(model_id=""), dict(model_id="x" * 65), dict(model_id="caf\u00e9"), dict(model_id="a\nb"),
    dict(model_id=b"base"), dict(model_digest=bytes(15)), dict(model_digest="00" * 16),
    dict(width=0), dict(width=65536), dict(height=0), dict(height=70000), dict(width=3.0),
    dict(width=True), dict(pad_log2=9), dict(pad_log2=-1), dict(n_slices=0),
    dict(n_slices=17), dict(frame_id=-1), dict(frame_id=2**64), dict(parent=b"\1" * 16),
    dict(parent=bytes(17)), dict(kind=4), dict(kind="base"), dict(extension=bytes(70000)),
])
def test_bad_header_fields_raise_header_error(kw: dict) -> None:
    with pytest.raises(HeaderError):
        make_header(**kw)


@pytest.mark.parametrize("kind", [LayerKind.ENHANCEMENT, LayerKind.RESIDUAL])
def test_refining_layers_need_a_parent(kind: LayerKind) -> None:
    with pytest.raises(HeaderError, match="parent"):
        make_header(kind, parent=bytes(16))
    assert make_header(kind, parent=b"\0" * 15 + b"\1").parent[-1] == 1


def test_substream_count_must_match_slices() -> None:
    h = make_header(n_slices=2)
    for subs in [(b"",) * 2, (b"",) * 4, ()]:
        with pytest.raises(HeaderError, match="substreams"):
            Layer(h, subs)
    with pytest.raises(HeaderError):
        Layer(h, (b"", "x", b""))  # type: ignore[arg-type]
    with pytest.raises(HeaderError):
        pack_layer("not a layer")  # type: ignore[arg-type]


def test_pack_revalidates_a_tampered_header() -> None:
    layer = make_layer()
    object.__setattr__(layer.header, "width", 0)
    with pytest.raises(HeaderError, match="width"):
        pack_layer(layer)


# -- every error class from the reader --------------------------------------------------------
def test_empty_and_tiny_inputs() -> None:
    rejects(TruncatedStreamError, b"")
    rejects(TruncatedStreamError, b"I")
    rejects(TruncatedStreamError, MAGIC + bytes([FORMAT_VERSION]))
    rejects(BitstreamError, b"\x00")
    rejects(BitstreamError, b"PNG\x89 and more", match="magic")


def test_truncation_at_every_offset() -> None:
    data = pack_layer(make_layer(LayerKind.RESIDUAL))
    for i in range(len(data)):
        exc = TruncatedStreamError if i < 60 else ChecksumError
        rejects(exc, data[:i])


def test_flip_every_byte() -> None:
    data = pack_layer(make_layer(LayerKind.ENHANCEMENT, extension=b"xy"))
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            exc = (BitstreamError if i < 4 else UnsupportedVersionError if i == OFF_VERSION
                   else ChecksumError)
            rejects(exc, bytes(bad))


def test_trailing_and_leading_garbage() -> None:
    data = pack_layer(make_layer())
    rejects(ChecksumError, data + b"\0")
    rejects(BitstreamError, b"\0" + data)
    rejects(HeaderError, forge(data, lambda b: b.extend(b"junk")), match="trailing")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_versions_are_refused(version: int) -> None:
    data = forge(pack_layer(make_layer()), lambda b: b.__setitem__(OFF_VERSION, version))
    rejects(UnsupportedVersionError, data, match=f"version {version}")
    # the version is judged before the checksum: a future layout may checksum differently
    rejects(UnsupportedVersionError, data[:-4] + b"\0\0\0\0", match=f"version {version}")


def test_max_bytes_is_checked_first() -> None:
    data = pack_layer(make_layer())
    assert unpack_layer(data, max_bytes=len(data)) is not None
    rejects(BitstreamError, data, match="limit", max_bytes=len(data) - 1)
    rejects(BitstreamError, b"\xff" * 100, match="limit", max_bytes=99)
    with pytest.raises(BitstreamError, match="limit"):
        unpack_layer(bytes(DEFAULT_MAX_LAYER_BYTES + 1))


def test_max_pixels() -> None:
    data = pack_layer(make_layer(width=8192, height=8192))
    assert unpack_layer(data).header.width == 8192
    big = pack_layer(make_layer(width=8193, height=8192))
    rejects(HeaderError, big, match="pixels")
    assert unpack_layer(big, max_pixels=DEFAULT_MAX_PIXELS * 2).header.width == 8193
    rejects(HeaderError, data, match="pixels", max_pixels=100)


def _set(off: int, fmt: str, value: int) -> Callable[[bytearray], None]:
    return lambda b: struct.pack_into(fmt, b, off, value)


def test_forged_fields_behind_a_valid_checksum() -> None:
    base = make_layer(model_id="abc", n_slices=2)
    data = pack_layer(base)
    table = OFF_IDLEN + 1 + 3  # substream count offset
    cases = [
        (HeaderError, "flags", _set(OFF_FLAGS, "<H", 1)),
        (HeaderError, "kind", _set(OFF_KIND, "<B", 9)),
        (HeaderError, "parent", _set(OFF_KIND, "<B", LayerKind.ENHANCEMENT)),
        (HeaderError, "parent", _set(OFF_PARENT, "<B", 1)),
        (HeaderError, "header length", _set(OFF_HLEN, "<H", 10)),
        (TruncatedStreamError, "header length", _set(OFF_HLEN, "<H", 0xFFFF)),
        (HeaderError, "width", _set(OFF_W, "<H", 0)),
        (HeaderError, "height", _set(OFF_H, "<H", 0)),
        (HeaderError, "pad_log2", _set(OFF_PAD, "<B", 9)),
        (HeaderError, "n_slices", _set(OFF_SLICES, "<B", 0)),
        (HeaderError, "n_slices", _set(OFF_SLICES, "<B", 17)),
        (HeaderError, "does not match n_slices", _set(OFF_SLICES, "<B", 1)),
        (HeaderError, "model_id length", _set(OFF_IDLEN, "<B", 0)),
        (HeaderError, "model_id length", _set(OFF_IDLEN, "<B", 65)),
        (TruncatedStreamError, "model_id needs", _set(OFF_IDLEN, "<B", 64)),
        (HeaderError, "printable", _set(OFF_IDLEN + 1, "<B", 0x07)),
        (HeaderError, "printable", _set(OFF_IDLEN + 1, "<B", 0xC3)),
        (HeaderError, "substream count", _set(table, "<B", 18)),
        (TruncatedStreamError, "substream lengths need", _set(table, "<B", 17)),
        (HeaderError, "does not match", _set(table, "<B", 2)),
        (TruncatedStreamError, "substream 1 needs 1200 bytes, 5 remain",
         _set(table + 5, "<I", 1200)),
        (TruncatedStreamError, "substream 0 needs", _set(table + 1, "<I", 2**32 - 1)),
        (HeaderError, "trailing", _set(table + 9, "<I", 2)),
    ]
    for exc, match, fn in cases:
        rejects(exc, forge(data, fn), match=match)


def test_extension_bytes_are_skipped_and_kept() -> None:
    """A v1 reader skips header fields a later compatible writer appends (header length)."""
    data = pack_layer(make_layer(model_id="abc"))
    hlen = struct.unpack_from("<H", data, OFF_HLEN)[0]

    def extend(b: bytearray) -> None:
        b[hlen:hlen] = b"future"
        struct.pack_into("<H", b, OFF_HLEN, hlen + 6)

    longer = forge(data, extend)
    layer = check_clean(longer)
    assert layer is not None and layer.header.extension == b"future"
    assert layer.substreams == unpack_layer(data).substreams


# -- fuzzing ----------------------------------------------------------------------------------
@fast(1500)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    check_clean(data)
    check_clean(MAGIC + bytes([FORMAT_VERSION]) + data)
    check_clean(recrc(MAGIC + bytes([FORMAT_VERSION]) + data))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid layer hit by a few flips, inserts, deletes and splices."""
    data = bytearray(pack_layer(draw(layers())))
    donor = pack_layer(draw(layers()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "splice"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and i < len(data):
            data[i] = draw(st.sampled_from([0, 1, 2, 16, 17, 64, 65, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "splice":
            j = draw(st.integers(0, len(donor)))
            data[i : i + draw(st.integers(0, 16))] = donor[j : j + draw(st.integers(0, 16))]
    return bytes(data)


@fast(500)
@given(mutated())
def test_mutated_layers_never_crash(data: bytes) -> None:
    check_clean(data)
    # the checksum catches nearly every mutation, so also recompute it: the mutation then
    # reaches the field checks behind it
    if len(data) >= 4:
        check_clean(recrc(data[:-4]))


def test_many_seeded_mutations_with_recomputed_checksum() -> None:
    """Cheap, hypothesis-free volume: 20k single-field forgeries of a few real layers."""
    rng = random.Random(1234)
    seeds = [pack_layer(make_layer(k, model_id="m" * rng.randint(1, 64), n_slices=n))
             for k in LayerKind for n in (1, 5, 16)]
    parsed = 0
    for _ in range(20_000):
        body = bytearray(rng.choice(seeds)[:-4])
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(body) + 1)
            r = rng.random()
            if r < 0.5 and i < len(body):
                body[i] = rng.randrange(256)
            elif r < 0.75:
                body[i:i] = rng.randbytes(rng.randint(1, 6))
            else:
                del body[i : i + rng.randint(1, 6)]
        parsed += check_clean(recrc(bytes(body))) is not None
    assert parsed > 0  # some forgeries (e.g. a digest byte) are valid layers


def test_error_messages_are_one_clear_line() -> None:
    data = forge(pack_layer(make_layer(n_slices=2)), _set(OFF_IDLEN + 1 + 9 + 1 + 8, "<I", 1200))
    with pytest.raises(TruncatedStreamError) as e:
        unpack_layer(data)
    assert re.fullmatch(r"layer truncated: substream 2 needs 1200 bytes, \d+ remain", str(e.value))
