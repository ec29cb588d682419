"""Payloads: the table of tensor encodings, and decoding or inspecting any payload.

Every compressor registers the body decoders of the encodings it writes here
(:func:`register_encoding`); :func:`decode` and :func:`inspect` read the
container (:mod:`fedzip.wire`) and hand each record to its decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import wire
from .errors import FormatError


@dataclass(frozen=True)
class TensorReport:
    """Where the bits of one tensor go."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    kept: int
    clusters: int  # centroids the record carries: k, or 2 × rank × k for low-rank factors
    header_bits: int
    centroid_bits: int
    position_bits: int
    label_bits: int
    padding_bits: int
    form: str = ""  # what the record holds, as its encoding describes it: "keep 0.01", "rank 2, 3 levels"

    @property
    def total_bits(self) -> int:
        return (
            self.header_bits + self.centroid_bits + self.position_bits + self.label_bits + self.padding_bits
        )


@dataclass(frozen=True)
class Inspection:
    """Per-tensor breakdown of a payload; ``total_bytes`` is ``len(payload)``."""

    version: int
    total_bytes: int
    container_bytes: int  # magic, version, layout digest (keyed), tensor count and checksum
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def elements(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def ratio(self) -> float:
        """Compression ratio against float32 (4 bytes per element)."""
        return 4 * self.elements / self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "elements": self.elements, "ratio": self.ratio}

    def __str__(self) -> str:
        lines = [
            f"fedzip payload v{self.version}: {self.total_bytes} bytes, {self.elements} elements, "
            f"{self.ratio:.1f}x vs float32 (container {self.container_bytes} bytes)",
            f"{'tensor':<24} {'shape':<16} {'enc':<8} {'form':<17} {'kept':>9} {'k':>3} "
            f"{'header':>7} {'centr.':>7} {'position':>10} {'label':>9} bits",
        ]
        for t in self.tensors:
            lines.append(
                f"{t.name[:24]:<24} {'x'.join(map(str, t.shape)) or '()':<16} {t.encoding:<8} "
                f"{t.form[:17]:<17} {t.kept:>9} {t.clusters:>3} {t.header_bits:>7} {t.centroid_bits:>7} "
                f"{t.position_bits:>10} {t.label_bits:>9}"
            )
        return "\n".join(lines)


BodyDecoder = Callable[[wire.Record], tuple[np.ndarray, int]]
"""Decodes a record's body: (flat values of the record's dtype, position bits)."""

_BODY_DECODERS: dict[int, BodyDecoder] = {}
_DESCRIBERS: dict[int, Callable[[wire.Record], str]] = {}


ENCODING_NAMES: dict[int, str] = {}


def register_encoding(
    encoding: int, name: str, decoder: BodyDecoder, describe: Callable[[wire.Record], str] | None = None
) -> None:
    """Make ``decode`` understand tensor records of this encoding id; ``describe`` says, for
    :func:`inspect`, what a record holds (from a record that decodes).

    Each id and each name is taken once: a second registration would change
    what existing payloads decode to, so it raises ValueError.
    """
    if isinstance(encoding, bool) or not isinstance(encoding, int) or not 0 <= encoding <= 255:
        raise ValueError(f"an encoding id is an int from 0 to 255, got {encoding!r}")
    if encoding in ENCODING_NAMES:
        raise ValueError(f"encoding id {encoding} is taken by {ENCODING_NAMES[encoding]!r}; choose a free id")
    if name in ENCODING_NAMES.values():
        raise ValueError(f"encoding name {name!r} is taken; choose another")
    _BODY_DECODERS[encoding] = decoder
    ENCODING_NAMES[encoding] = name
    if describe is not None:
        _DESCRIBERS[encoding] = describe


def encoding_name(encoding: int) -> str:
    """The registered name of an encoding id (the id as text when unknown; "none" for a tensor a
    keyed container leaves out)."""
    if encoding == wire.ABSENT:
        return "none"
    return ENCODING_NAMES.get(encoding, str(encoding))


def _decode_each(records: list[wire.Record]) -> Iterator[tuple[wire.Record, np.ndarray, int]]:
    for rec in records:
        decoder = _BODY_DECODERS.get(rec.encoding)
        if decoder is None and rec.encoding != wire.ABSENT:
            raise FormatError(f"tensor {rec.name!r}: unknown encoding id {rec.encoding}")
        if rec.encoding != wire.ABSENT and (rec.dtype.kind != "f") != (rec.encoding == wire.EXACT):
            raise FormatError(
                f"tensor {rec.name!r} is {rec.dtype} with encoding {encoding_name(rec.encoding)!r}: "
                "integer and bool tensors are carried exactly (encoding 'exact'), float tensors not"
            )
        if rec.encoding == wire.ABSENT or (rec.size == 0 and rec.empty):
            # an empty tensor carries nothing to decode; skipping the decoder keeps
            # payloads of many empty tensors cheap
            yield rec, np.zeros(rec.shape, rec.dtype), 0
            continue
        try:
            values, position_bits = decoder(rec)
            values = values.reshape(rec.shape)
        except FormatError:
            raise
        except MemoryError as exc:
            raise FormatError(
                f"tensor {rec.name!r} declares {rec.size} elements: too many to allocate"
            ) from exc
        except (ValueError, IndexError, OverflowError) as exc:
            # Every check should have caught a defect before numpy does; if
            # one slips through it is still the payload's fault.
            raise FormatError(f"tensor {rec.name!r}: malformed body ({exc})") from exc
        yield rec, values, position_bits


def decode_records(records: list[wire.Record]) -> dict[str, np.ndarray]:
    """Decode the bodies of records parsed by :func:`fedzip.wire.read`.

    Lets a receiver check the headers (names, shapes, dtypes, encodings)
    before paying for the bodies.
    """
    return {rec.name: values for rec, values, _ in _decode_each(records)}


def decode(
    payload: bytes,
    max_elements: int | None = None,
    max_tensors: int | None = None,
    layout: Mapping[str, np.ndarray] | wire.Layout | None = None,
) -> dict[str, np.ndarray]:
    """Decode any fedzip payload into name -> array (names, order, shapes, dtypes kept).

    ``max_elements`` and ``max_tensors`` refuse payloads that declare more
    elements in total or more tensors, before anything is allocated.
    ``layout``: the model's arrays (or :func:`fedzip.wire.layout_of` them), needed
    for a payload made with ``known_layout=True``, which leaves names and shapes out.
    Malformed input raises :class:`FormatError`.
    """
    return decode_records(wire.read(payload, max_elements, max_tensors, layout))


def _form(rec: wire.Record) -> str:
    if rec.encoding == wire.ABSENT:
        return "left out"
    return _DESCRIBERS[rec.encoding](rec) if rec.encoding in _DESCRIBERS and rec.size else ""


def inspect(payload: bytes, layout: Mapping[str, np.ndarray] | wire.Layout | None = None) -> Inspection:
    """Decode ``payload`` and report where its bytes go, tensor by tensor (``layout`` as for
    :func:`decode`)."""
    tensors = []
    used = 0
    for rec, _, position_bits in _decode_each(wire.read(payload, layout=layout)):
        body_bytes = len(rec.body)
        used += rec.header_bytes + rec.centroid_bytes * rec.centroids.size + body_bytes
        tensors.append(
            TensorReport(
                name=rec.name,
                shape=rec.shape,
                dtype=str(rec.dtype),
                encoding=encoding_name(rec.encoding),
                kept=rec.kept,
                clusters=rec.centroids.size,
                header_bits=8 * rec.header_bytes,
                centroid_bits=8 * rec.centroid_bytes * rec.centroids.size,
                position_bits=position_bits,
                label_bits=rec.body_bits - position_bits,
                padding_bits=8 * body_bytes - rec.body_bits,
                form=_form(rec),
            )
        )
    return Inspection(payload[len(wire.MAGIC)], len(payload), len(payload) - used, tensors)
