"""Bit-level reading and writing, MSB first, vectorised with numpy.

Writers collect sections as arrays of single bits (one uint8 per bit) and pack
them once at the end; readers work on the packed bytes through 64-bit windows,
so a field at any bit offset is read with a handful of array operations.
"""

from __future__ import annotations

import numpy as np

from .errors import FormatError

_U64 = np.uint64


def bits_of(values: np.ndarray, width: int) -> np.ndarray:
    """Bits of ``values`` (non-negative ints) in ``width`` bits each, MSB first."""
    values = np.asarray(values, dtype=_U64).reshape(-1)
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=_U64)
    return ((values[:, None] >> shifts) & _U64(1)).astype(np.uint8).reshape(-1)


def varbits_of(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated bits of ``codes[i]`` in ``lengths[i]`` bits each, MSB first."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.asarray(codes, dtype=_U64)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    out = np.zeros(total, dtype=np.uint8)
    if total == 0:
        return out
    starts = ends - lengths
    # One pass per bit position of the longest code; each pass only touches
    # the codes that are still that long, so short frequent codes cost one pass.
    active = np.flatnonzero(lengths > 0)
    j = 0
    while active.size:
        ln = lengths[active]
        shift = (ln - 1 - j).astype(_U64)
        out[starts[active] + j] = ((codes[active] >> shift) & _U64(1)).astype(np.uint8)
        j += 1
        active = active[ln > j]
    return out


def unary_bits(quotients: np.ndarray) -> np.ndarray:
    """Unary code: ``q`` zeros then a one, for every ``q`` in ``quotients``."""
    q = np.asarray(quotients, dtype=np.int64)
    out = np.zeros(int(q.sum()) + q.size, dtype=np.uint8)
    out[np.cumsum(q + 1) - 1] = 1
    return out


class BitWriter:
    """Collects bit sections and packs them into bytes once."""

    def __init__(self) -> None:
        self._pieces: list[np.ndarray] = []
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        if value < 0 or (width < 64 and value >> width):
            raise ValueError(f"value {value} does not fit in {width} bits")
        self.write_bits(bits_of(np.array([value]), width))

    def write_array(self, values: np.ndarray, width: int) -> None:
        self.write_bits(bits_of(values, width))

    def write_bits(self, bits: np.ndarray) -> None:
        if bits.size:
            self._pieces.append(bits)
            self.nbits += bits.size

    def getvalue(self) -> bytes:
        if not self._pieces:
            return b""
        return np.packbits(np.concatenate(self._pieces)).tobytes()


class BitReader:
    """Reads fields from ``nbits`` bits of packed MSB-first ``data``.

    Every read is bounds-checked and raises :class:`FormatError` when the
    stream is shorter than the fields it declares.
    """

    def __init__(self, data: bytes, nbits: int) -> None:
        if nbits > len(data) * 8:
            raise FormatError("bit stream is shorter than its declared length")
        self.data = data
        self.nbits = nbits
        self.pos = 0
        # Two zero words of padding so a window may start at the last bit.
        padded = data + bytes(-len(data) % 8 + 16)
        self._words = np.frombuffer(padded, dtype=">u8").astype(_U64)

    @property
    def remaining(self) -> int:
        return self.nbits - self.pos

    def _need(self, count: int) -> None:
        if count < 0 or count > self.remaining:
            raise FormatError(
                f"bit stream truncated: need {count} bits at bit {self.pos}, {self.remaining} left"
            )

    def windows(self, positions: np.ndarray) -> np.ndarray:
        """The 64 bits starting at each of ``positions`` (clipped to the stream)."""
        positions = np.minimum(positions, self.nbits)
        word = positions >> 6
        shift = (positions & 63).astype(_U64)
        hi = self._words[word] << shift
        # (w >> 1) >> (63 - s) == w >> (64 - s) without a shift by 64 when s == 0
        lo = (self._words[word + 1] >> _U64(1)) >> (_U64(63) - shift)
        return hi | lo

    def read(self, width: int) -> int:
        if width == 0:
            return 0
        self._need(width)
        value = int(self.windows(np.array([self.pos]))[0] >> _U64(64 - width))
        self.pos += width
        return value

    def read_array(self, count: int, width: int) -> np.ndarray:
        if width == 0 or count == 0:
            return np.zeros(count, dtype=_U64)
        if width > 64:
            raise FormatError(f"field width {width} exceeds 64 bits")
        self._need(count * width)
        positions = self.pos + np.arange(count, dtype=np.int64) * width
        self.pos += count * width
        return self.windows(positions) >> _U64(64 - width)

    def read_flags(self, count: int) -> np.ndarray:
        """``count`` single bits as a bool array (faster than ``read_array(count, 1)``)."""
        self._need(count)
        start = self.pos
        chunk = np.frombuffer(self.data, dtype=np.uint8)[start >> 3 : (start + count + 7 >> 3) + 1]
        self.pos += count
        return np.unpackbits(chunk)[start & 7 : (start & 7) + count].astype(bool)

    def read_varbits(self, widths: np.ndarray) -> np.ndarray:
        """Fields of the given widths (each at most 64), back to back."""
        widths = np.asarray(widths, dtype=np.int64)
        ends = np.cumsum(widths)
        total = int(ends[-1]) if ends.size else 0
        self._need(total)
        if total == 0:
            return np.zeros(widths.size, dtype=_U64)
        starts = self.pos + ends - widths
        self.pos += total
        win = self.windows(starts)
        safe = np.maximum(widths, 1).astype(_U64)
        return np.where(widths > 0, win >> (_U64(64) - safe), _U64(0))

    def read_unary(self, count: int) -> np.ndarray:
        """``count`` unary codes (zeros ended by a one); returns the zero counts."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        data = np.frombuffer(self.data, dtype=np.uint8)
        first = self.pos >> 3
        # Unpack only as far as the codes reach: a span that doubles until it holds them.
        span = 2 * count + 64
        while True:
            stop = min(self.pos + span, self.nbits)
            bits = np.unpackbits(data[first : (stop + 7) >> 3])[self.pos - 8 * first : stop - 8 * first]
            ones = np.flatnonzero(bits.view(bool))  # far faster than on uint8
            if ones.size >= count:
                break
            if stop == self.nbits:
                raise FormatError(f"bit stream truncated: {count} unary codes declared, {ones.size} found")
            span *= 2
        ends = ones[:count]
        quotients = np.diff(ends, prepend=-1) - 1
        self.pos += int(ends[-1]) + 1
        return quotients
