"""Thin, defensive wrapper over CompressAI's rANS coder with frozen CDF tables.

The CDF tables are computed once when a model is frozen and stored in its package; encoder and
decoder read the same integers instead of recomputing them from floats on each machine.
"""

from __future__ import annotations

import numpy as np
import torch
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor

from .errors import BitstreamError

__all__ = ["RansStream", "RansTables"]

# Upper bound on how far CompressAI's decoder can read past a stream (it does no bounds checks):
# one 32-bit word per symbol, and at most 16x the stream length through chains of bypass codes
# (each bypass nibble run consumes 4 bits of state per 4 bits of output). The stream is padded with
# zeros by that much, so hostile bytes can make it decode garbage but never read outside memory.
_PAD_PER_SYMBOL = 8
_PAD_PER_BYTE = 16
_PAD_FIXED = 4096


class RansTables:
    """Quantized CDF tables (one per distribution) and the rANS calls that use them."""

    def __init__(self, quantized_cdf: Tensor, cdf_length: Tensor, offset: Tensor) -> None:
        self.n_tables = int(cdf_length.numel())
        if self.n_tables == 0:
            raise ValueError("entropy tables are empty: freeze the model before coding")
        lengths = cdf_length.reshape(-1).int().tolist()
        rows = quantized_cdf.int().tolist()
        self._cdf = [row[:n] for row, n in zip(rows, lengths, strict=True)]
        self._len = lengths
        self._off = offset.reshape(-1).int().tolist()

    def encode(self, symbols: Tensor, indexes: Tensor) -> bytes:
        """rANS-encode integer ``symbols`` with table ``indexes`` (same shape)."""
        sym = symbols.reshape(-1).to(torch.int32).tolist()
        idx = indexes.reshape(-1).to(torch.int32).tolist()
        return RansEncoder().encode_with_indexes(sym, idx, self._cdf, self._len, self._off)

    def decode(self, data: bytes, indexes: Tensor) -> Tensor:
        """Decode as many symbols as ``indexes`` holds; returns int32 of the same shape."""
        return self.stream(data, indexes.numel()).decode(indexes)

    def stream(self, data: bytes, n_symbols: int) -> RansStream:
        """A decoder that reads ``data``'s ``n_symbols`` symbols in several calls, for coders
        whose later tables depend on earlier symbols (a checkerboard's second pass)."""
        return RansStream(self, data, n_symbols)


class RansStream:
    """One rANS string decoded in parts, in the order it was encoded (at most ``n_symbols``)."""

    def __init__(self, tables: RansTables, data: bytes, n_symbols: int) -> None:
        self._tables = tables
        self._left = n_symbols
        pad = _PAD_FIXED + _PAD_PER_BYTE * len(data) + _PAD_PER_SYMBOL * n_symbols
        self._decoder = RansDecoder()
        self._decoder.set_stream(bytes(data) + bytes(pad))

    def decode(self, indexes: Tensor) -> Tensor:
        """The next ``indexes.numel()`` symbols; int32 of the same shape as ``indexes``."""
        t = self._tables
        idx = indexes.reshape(-1).to(torch.int32)
        if idx.numel() > self._left:
            raise ValueError("more symbols requested than the stream was opened for")
        self._left -= idx.numel()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.n_tables):
            raise BitstreamError("entropy table index out of range")
        out = self._decoder.decode_stream(idx.tolist(), t._cdf, t._len, t._off)
        arr = np.asarray(out, dtype=np.int32)
        return torch.from_numpy(arr).reshape(indexes.shape)
