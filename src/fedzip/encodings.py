"""The three FedZip encodings of a quantized tensor: huffman, position, dap.

Each turns (kept addresses, cluster labels) into one bit stream and back.
- ``huffman``: Huffman code over the symbol of every entry of the tensor
  (0 for a pruned entry, 1 + label for a kept one); at least one bit per entry
  unless the tensor is constant.
- ``position``: each kept address in ``ceil(log2 size)`` bits, then the labels.
- ``dap``: the gaps between kept addresses in a self-delimiting code
  (:mod:`fedzip.gaps`), then the labels.
Labels are Huffman-coded by :func:`fedzip.huffman.write_labels`. When every
entry is kept, position and dap send no addresses at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gaps, huffman
from .bitio import BitReader, BitWriter
from .errors import FormatError

HUFFMAN = 1
POSITION = 2
DAP = 3
NAMES = {HUFFMAN: "huffman", POSITION: "position", DAP: "dap"}
IDS = {name: ident for ident, name in NAMES.items()}
CHOICES = tuple(NAMES.values())  # the three lossless codes of one quantized tensor


@dataclass(frozen=True)
class Quantized:
    """A tensor after sparsification and quantization: exactly what travels."""

    shape: tuple[int, ...]
    dtype: np.dtype
    positions: np.ndarray  # sorted flat addresses of the kept entries
    labels: np.ndarray  # cluster of each kept entry
    centroids: np.ndarray  # float32, ascending

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        return int(self.positions.size)

    def dense(self) -> np.ndarray:
        if self.kept == self.size:  # every entry kept, in order: a gather, no scatter
            return self.centroids.astype(self.dtype)[self.labels].reshape(self.shape)
        out = np.zeros(self.size, dtype=self.dtype)
        if self.kept:
            out[self.positions] = self.centroids.astype(self.dtype)[self.labels]
        return out.reshape(self.shape)


def _huffman_counts(q: Quantized) -> np.ndarray:
    counts = np.bincount(q.labels, minlength=q.centroids.size) if q.kept else np.zeros(q.centroids.size)
    return np.concatenate(([q.size - q.kept], counts)).astype(np.int64)


def address_width(size: int) -> int:
    return max(size - 1, 0).bit_length()


def plan(encoding: int, q: Quantized, label_plan: tuple[int, int]) -> int:
    """Exact size in bits of the body :func:`write` produces."""
    if q.size == 0:
        return 0
    if encoding == HUFFMAN:
        return huffman.stream_bits(_huffman_counts(q))
    if q.kept == 0:
        return 0
    if q.kept == q.size:
        position_bits = 0
    elif encoding == POSITION:
        position_bits = q.kept * address_width(q.size)
    else:
        position_bits = gaps.plan(_gaps(q.positions), q.size)[2]
    return position_bits + label_plan[1]


def choose(q: Quantized, encoding_name: str) -> tuple[int, tuple[int, int], int]:
    """(encoding id, label plan, body bits) of ``q``; ``"auto"`` takes the smallest encoding."""
    label_plan = huffman.plan_labels(q.labels, q.centroids.size)
    ids = list(NAMES) if encoding_name == "auto" else [IDS[encoding_name]]
    bits, encoding = min((plan(e, q, label_plan), e) for e in ids)
    return encoding, label_plan, bits


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1)


def write(writer: BitWriter, encoding: int, q: Quantized, label_plan: tuple[int, int]) -> None:
    """Write the body of ``q`` in ``encoding``."""
    if q.size == 0:
        return
    if encoding == HUFFMAN:
        symbols = np.zeros(q.size, dtype=np.uint16)
        symbols[q.positions] = q.labels.astype(np.uint16) + 1
        huffman.write_stream(writer, symbols, q.centroids.size + 1)
        return
    if q.kept == 0:
        return
    if q.kept < q.size:
        if encoding == POSITION:
            writer.write_array(q.positions, address_width(q.size))
        else:
            deltas = _gaps(q.positions)
            method, param, _ = gaps.plan(deltas, q.size)
            gaps.write(writer, deltas, method, param)
    huffman.write_labels(writer, q.labels, q.centroids.size, label_plan[0])


def read(
    reader: BitReader, encoding: int, size: int, kept: int, clusters: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read a body: (positions, labels, bits spent on positions)."""
    if size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8), 0
    if encoding == HUFFMAN:
        if size > reader.remaining and kept == 0:
            # Only a one-symbol stream can hold more entries than bits: all pruned.
            # Checked without materialising one symbol per entry.
            if reader.read(1) != 1 or reader.read(huffman.symbol_width(clusters + 1)) != 0:
                raise FormatError(f"{size} entries declared, only {reader.remaining} bits left")
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8), 0
        symbols = huffman.read_stream(reader, size, clusters + 1)
        positions = np.flatnonzero(symbols != 0)
        if positions.size != kept:
            raise FormatError(f"header declares {kept} kept entries, the stream holds {positions.size}")
        return positions, (symbols[positions] - 1).astype(np.uint8), 0
    start = reader.pos
    if kept == 0:
        positions = np.zeros(0, dtype=np.int64)
    elif kept == size:
        positions = np.arange(size, dtype=np.int64)
    elif encoding == POSITION:
        positions = reader.read_array(kept, address_width(size)).astype(np.int64)
        if np.any(np.diff(positions) <= 0):
            raise FormatError("kept addresses are not strictly increasing")
    else:
        positions = np.cumsum(gaps.read(reader, kept)) - 1
    if kept and positions[-1] >= size:
        raise FormatError(f"kept address {positions[-1]} outside a tensor of {size} entries")
    position_bits = reader.pos - start
    labels = huffman.read_labels(reader, kept, clusters)
    return positions, labels, position_bits
