"""Canonical, length-limited Huffman coding of symbol streams.

A stream is split into blocks of a fixed number of symbols whose bit lengths
are stored up front, so the decoder advances every block one symbol per step
with array operations instead of walking the stream one symbol at a time.

Stream layout (MSB first):
  single:1
  single == 1: symbol:bit_length(alphabet - 1)     (every symbol is this one)
  single == 0: code length of each symbol:4 (0 = unused, complete code)
               bit length of every block but the last:block_width
               the code words
The block size and block_width follow from the symbol count and the longest
code, so they are not stored.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .bitio import BitReader, BitWriter, bits_of
from .errors import FormatError

MAX_CODE_LENGTH = 15
LENGTH_BITS = 4
MAX_GROUP = 8
GROUP_BITS = 3
_CHUNK = 1 << 18


def _huffman_lengths(weights: list[int]) -> list[int]:
    """Unconstrained Huffman code lengths for positive ``weights``: each merge records its two
    children's parent, and a leaf's length is its depth, counted from the root down."""
    n = len(weights)
    heap = [(w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)  # leaves 0..n-1, merged nodes n.. in the order they were made
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for child in range(2 * n - 3, -1, -1):  # parents come after their children
        depth[child] = depth[parent[child]] + 1
    return depth[:n]


def _package_merge(weights: list[int], max_length: int) -> list[int]:
    """Optimal code lengths no longer than ``max_length`` for ascending ``weights``."""
    n = len(weights)
    # Each level is a list of (weight, is_package) sorted by weight; a package
    # pairs two consecutive items of the level below.
    levels = [[(w, False) for w in weights]]
    for _ in range(max_length - 1):
        prev = levels[-1]
        packages = [(prev[i][0] + prev[i + 1][0], True) for i in range(0, len(prev) - 1, 2)]
        levels.append(sorted([(w, False) for w in weights] + packages, key=lambda item: item[0]))
    lengths = [0] * n
    take = 2 * n - 2
    for level in reversed(levels):
        n_leaves = sum(1 for _, is_pkg in level[:take] if not is_pkg)
        for i in range(n_leaves):
            lengths[i] += 1
        take = 2 * (take - n_leaves)
    return lengths


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths no longer than ``max_length``.

    Plain Huffman when it fits, package-merge when it does not. Unused
    symbols get length 0; with one used symbol it gets length 0 too.
    """
    return np.array(_lengths(np.asarray(counts, dtype=np.int64).tolist(), max_length), dtype=np.int64)


def _lengths(counts: list[int], max_length: int) -> list[int]:
    """:func:`code_lengths` on a list: alphabets are small (at most 2^15 symbols, usually under
    20), and the budget prices thousands of them an update, where numpy's calls cost more."""
    lengths = [0] * len(counts)
    used = [i for i, c in enumerate(counts) if c]
    if len(used) < 2:
        return lengths
    if len(used) > 1 << max_length:
        raise ValueError(f"{len(used)} symbols cannot fit in {max_length}-bit codes")
    order = sorted(used, key=counts.__getitem__)  # stable: ties in symbol order
    weights = [counts[i] for i in order]
    found = _huffman_lengths(weights)
    if max(found) > max_length:
        found = _package_merge(weights, max_length)
    for symbol, length in zip(order, found, strict=True):
        lengths[symbol] = length
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words for the given code lengths (0 = unused)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code = 0
    prev_len = 0
    for sym in np.lexsort((np.arange(lengths.size), lengths)):
        ln = int(lengths[sym])
        if ln == 0:
            continue
        code <<= ln - prev_len
        codes[sym] = code
        code += 1
        prev_len = ln
    return codes


def block_log2(count: int) -> int:
    """Symbols per block (log2): about sqrt(count), between 64 and 16384."""
    return min(14, max(6, round(math.log2(max(count, 1)) / 2)))


def block_width(count: int, max_len: int) -> int:
    return (max_len << block_log2(count)).bit_length()


def symbol_width(alphabet: int) -> int:
    return max(alphabet - 1, 0).bit_length()


def stream_bits(counts: np.ndarray) -> int:
    """Exact size in bits of :func:`write_stream` for symbols with these counts."""
    listed = np.asarray(counts, dtype=np.int64).tolist()
    count = sum(listed)
    if len(listed) - listed.count(0) < 2:
        return 1 + symbol_width(len(listed))
    lengths = _lengths(listed, MAX_CODE_LENGTH)
    nblocks = -(-count >> block_log2(count))
    return (
        1
        + LENGTH_BITS * len(listed)
        + (nblocks - 1) * block_width(count, max(lengths))
        + sum(c * n for c, n in zip(listed, lengths, strict=True))
    )


def write_stream(writer: BitWriter, symbols: np.ndarray, alphabet: int) -> None:
    """Huffman-code ``symbols`` (ints in ``[0, alphabet)``)."""
    counts = np.bincount(symbols, minlength=alphabet)
    used = np.flatnonzero(counts)
    if used.size < 2:
        writer.write(1, 1)
        writer.write(int(used[0]) if used.size else 0, symbol_width(alphabet))
        return
    writer.write(0, 1)
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    writer.write_array(lengths, LENGTH_BITS)
    count = symbols.size
    log2 = block_log2(count)
    width = int(lengths.max())
    if count > 1 << log2:
        starts = np.arange(0, count, 1 << log2)
        block_bits = np.add.reduceat(lengths.astype(np.uint8)[symbols], starts, dtype=np.int64)
        writer.write_array(block_bits[:-1], block_width(count, width))
    # Each symbol's code as a row of bits (left-aligned, width wide) and which of them are its
    # own; the stream is the chosen bits of the rows, taken in chunks.
    rows = bits_of(codes << (width - lengths).astype(np.uint64), width).reshape(-1, width)
    own = np.arange(width) < lengths[:, None]
    for start in range(0, count, _CHUNK):
        chunk = symbols[start : start + _CHUNK]
        # take and compress: several times faster here than fancy and boolean indexing
        mask = np.take(own, chunk, axis=0).reshape(-1)
        writer.write_bits(np.compress(mask, np.take(rows, chunk, axis=0).reshape(-1)))


def read_stream(reader: BitReader, count: int, alphabet: int) -> np.ndarray:
    """Inverse of :func:`write_stream`: ``count`` symbols."""
    return _read_rows(reader, count, alphabet).reshape(-1)[:count]


def _read_rows(reader: BitReader, count: int, alphabet: int) -> np.ndarray:
    """The symbols of a stream as rows (one per block, a view: not contiguous) whose first ``count``
    entries in row order are the symbols, so a caller's own pass can flatten them."""
    if count == 0:
        return np.zeros((1, 0), dtype=np.uint16)
    if reader.read(1):
        sym = reader.read(symbol_width(alphabet))
        if sym >= alphabet:
            raise FormatError(f"symbol {sym} outside an alphabet of {alphabet}")
        return np.full((1, count), sym, dtype=np.uint16)
    lengths = reader.read_array(alphabet, LENGTH_BITS).astype(np.int64)
    used = lengths > 0
    if used.sum() < 2 or int((2 ** (MAX_CODE_LENGTH - lengths[used])).sum()) != 1 << MAX_CODE_LENGTH:
        raise FormatError("Huffman code lengths do not form a complete prefix code")
    if count > reader.remaining:
        raise FormatError(f"{count} symbols declared, only {reader.remaining} bits left")
    max_len = int(lengths.max())
    # Lookup table indexed by the next max_len bits: code length << 16 | symbol.
    codes = canonical_codes(lengths)
    table = np.zeros(1 << max_len, dtype=np.int64)
    for sym in np.flatnonzero(used):
        ln = int(lengths[sym])
        lo = int(codes[sym]) << (max_len - ln)
        hi = (int(codes[sym]) + 1) << (max_len - ln)
        table[lo:hi] = ln << 16 | sym

    log2 = block_log2(count)
    block = 1 << log2
    nblocks = -(-count >> log2)
    block_bits = reader.read_array(nblocks - 1, block_width(count, max_len)).astype(np.int64)
    bounds = reader.pos + np.concatenate(([0], np.cumsum(block_bits)))
    if bounds[-1] > reader.nbits:
        raise FormatError("Huffman blocks extend past the end of the stream")
    # The 32 bits from every byte the stream can reach (its last block holds at most ``block``
    # codes): a code (<= 15 bits) starting anywhere in a byte is in its window, read with fewer
    # array steps than a 64-bit one.
    first = int(bounds[0]) >> 3
    reach = min(reader.nbits, int(bounds[-1]) + block * max_len)
    data = np.frombuffer(reader.data, dtype=np.uint8)[first : (reach + 7) >> 3]
    padded = np.zeros(data.size + 3, dtype=np.uint32)
    padded[: data.size] = data
    words = padded[:-3] << 24 | padded[1:-2] << 16 | padded[2:-1] << 8 | padded[3:]
    cursor = bounds - 8 * first
    out = np.empty((block, nblocks), dtype=np.uint16)  # a row per step: contiguous stores
    last_count = count - (nblocks - 1) * block
    last_end = -1
    mask = np.uint32((1 << max_len) - 1)
    for step in range(block):
        # A block's cursor stays inside the stream until its last code, checked below.
        byte = np.minimum(cursor >> 3, data.size - 1)
        peek = (words[byte] >> (32 - max_len - (cursor & 7)).astype(np.uint32)) & mask
        entry = table[peek]
        out[step] = entry  # the low 16 bits: the symbol
        cursor += entry >> 16
        if step == last_count - 1:
            last_end = int(cursor[-1]) + 8 * first
    cursor += 8 * first
    if not np.array_equal(cursor[:-1], bounds[1:]) or last_end > reader.nbits:
        raise FormatError("Huffman block lengths do not match the coded data")
    reader.pos = last_end
    return out.T


def _grouped(labels: np.ndarray, clusters: int, group: int) -> np.ndarray:
    """Labels taken ``group`` at a time as base-``clusters`` numbers (zero-padded; below 256)."""
    padded = np.zeros(-(-labels.size // group) * group, dtype=np.uint16)
    padded[: labels.size] = labels
    digits = padded.reshape(-1, group)
    symbols = digits[:, 0].copy()
    for column in range(1, group):
        symbols *= clusters
        symbols += digits[:, column]
    return symbols


def _groups_allowed(clusters: int) -> range:
    group = 1
    while group < MAX_GROUP and clusters ** (group + 1) <= 256:
        group += 1
    return range(1, group + 1)


def plan_labels(labels: np.ndarray, clusters: int) -> tuple[int, int]:
    """Best group size for :func:`write_labels` and the resulting size in bits."""
    if clusters <= 1 or labels.size == 0:
        return 1, 0
    best = None
    for group in _groups_allowed(clusters):
        symbols = _grouped(labels, clusters, group)
        bits = GROUP_BITS + stream_bits(np.bincount(symbols, minlength=clusters**group))
        if best is None or bits < best[1]:
            best = (group, bits)
    return best


def write_labels(writer: BitWriter, labels: np.ndarray, clusters: int, group: int) -> None:
    """Huffman-code cluster labels, ``group`` labels per code word.

    Coding several labels per word brings the Huffman code close to the
    labels' entropy when one cluster dominates (a single label can never cost
    less than one bit).
    """
    if clusters <= 1 or labels.size == 0:
        return
    writer.write(group - 1, GROUP_BITS)
    write_stream(writer, _grouped(labels, clusters, group), clusters**group)


def read_labels(reader: BitReader, count: int, clusters: int) -> np.ndarray:
    """Inverse of :func:`write_labels`: ``count`` labels (uint8)."""
    if clusters <= 1 or count == 0:
        return np.zeros(count, dtype=np.uint8)
    group = reader.read(GROUP_BITS) + 1
    if group not in _groups_allowed(clusters):
        raise FormatError(f"label group of {group} is invalid for {clusters} clusters")
    rows = _read_rows(reader, -(-count // group), clusters**group)
    if group == 1:  # symbols < clusters <= 256
        return rows.astype(np.uint8, order="C").reshape(-1)[:count]
    # Every symbol's digits, looked up: one gather instead of a division per label.
    powers = clusters ** np.arange(group - 1, -1, -1, dtype=np.int64)
    digits = ((np.arange(clusters**group)[:, None] // powers) % clusters).astype(np.uint8)
    return np.take(digits, rows, axis=0).reshape(-1)[:count]
