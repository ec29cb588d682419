"""Self-delimiting codes for the gaps between consecutive kept addresses.

Gaps are integers >= 1 (the first gap is the first address + 1). Two codes:
- Elias-gamma: ``N = floor(log2 g)`` in unary, then the low ``N`` bits of g;
- Golomb-Rice with parameter ``b``: ``(g - 1) >> b`` in unary, then the low
  ``b`` bits of ``g - 1``.
All unary parts are written first, then all fixed parts, so both halves are
read back with array operations. The section is ``method:1``, for Rice
``b:6``, then the unary part and the fixed part.
"""

from __future__ import annotations

import math

import numpy as np

from .bitio import BitReader, BitWriter, bits_of, unary_bits, varbits_of
from .errors import FormatError

GAMMA = 0
RICE = 1
RICE_PARAM_BITS = 6


def _floor_log2(values: np.ndarray) -> np.ndarray:
    # frexp is exact for integers below 2**53, far beyond any tensor size.
    return np.frexp(values.astype(np.float64))[1].astype(np.int64) - 1


def rice_parameter(density: float) -> int:
    """Golomb parameter for geometric gaps of this density, rounded to a power of two."""
    if density >= 0.5:
        return 0
    m = math.ceil(-math.log(2 - density) / math.log1p(-density))
    return max(0, round(math.log2(m)))


def plan(gaps: np.ndarray, n: int) -> tuple[int, int, int]:
    """(method, rice parameter, bits) of the smallest code for ``gaps``."""
    gaps = np.asarray(gaps, dtype=np.int64)
    header = 1
    gamma = header + int((2 * _floor_log2(gaps) + 1).sum())
    best = (GAMMA, 0, gamma)
    b0 = rice_parameter(gaps.size / max(n, 1))
    excess = gaps - 1
    for b in range(max(0, b0 - 1), min(b0 + 2, 1 << RICE_PARAM_BITS)):
        bits = header + RICE_PARAM_BITS + gaps.size * (b + 1) + int((excess >> b).sum())
        if bits < best[2]:
            best = (RICE, b, bits)
    return best


def write(writer: BitWriter, gaps: np.ndarray, method: int, param: int) -> None:
    gaps = np.asarray(gaps, dtype=np.int64)
    writer.write(method, 1)
    if method == RICE:
        writer.write(param, RICE_PARAM_BITS)
        excess = gaps - 1
        writer.write_bits(unary_bits(excess >> param))
        writer.write_bits(bits_of(excess & ((1 << param) - 1), param))
    else:
        widths = _floor_log2(gaps)
        writer.write_bits(unary_bits(widths))
        writer.write_bits(varbits_of(gaps.astype(np.uint64), widths))


def read(reader: BitReader, count: int) -> np.ndarray:
    """``count`` gaps (int64, each >= 1)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    method = reader.read(1)
    if method == RICE:
        param = reader.read(RICE_PARAM_BITS)
        quotients = reader.read_unary(count)
        if quotients.max() >= 1 << (62 - param):
            raise FormatError("gap too large")
        remainders = reader.read_array(count, param).astype(np.int64)
        return (quotients << param) + remainders + 1
    widths = reader.read_unary(count)
    if widths.max() > 62:
        raise FormatError("gap too large")
    low = reader.read_varbits(widths).astype(np.int64)
    return (np.int64(1) << widths) | low
