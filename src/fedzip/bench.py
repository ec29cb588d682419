"""Codec benchmark: size, speed and memory of each encoding and baseline next to zstd.

Every figure is measured in the same run on the same bytes: compression ratio
is ``4 * parameters / len(payload)``, throughput is MB of float32 input per
second (best of ``repeat`` runs), peak extra memory is what ``tracemalloc``
sees numpy allocate during one encode, relative to the input's size.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .abc import Compressor
from .codec import FedZip
from .encodings import CHOICES
from .payload import decode
from .registry import get_compressor

PAPER_CNN_SHAPES = {
    "conv1.weight": (3, 3, 1, 32),
    "conv1.bias": (32,),
    "conv2.weight": (3, 3, 32, 64),
    "conv2.bias": (64,),
    "dense1.weight": (9216, 128),
    "dense1.bias": (128,),
    "dense2.weight": (128, 10),
    "dense2.bias": (10,),
}


def heavy_tailed_update(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic update with the heavy tails of real ones (Student-t, 3 d.o.f.)."""
    rng = np.random.default_rng(seed)
    update = {}
    for name, shape in shapes.items():
        fan_in = math.prod(shape[:-1]) if len(shape) > 1 else 1
        scale = 0.01 / math.sqrt(max(fan_in, 1)) * 10
        update[name] = (rng.standard_t(3, size=shape) * scale).astype(np.float32)
    return update


def large_shapes(parameters: int) -> dict[str, tuple[int, ...]]:
    """Dense layers (with biases) adding up to about ``parameters``."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = 4096
    layer = 0
    remaining = parameters
    while remaining > width:
        rows = min(width, max(1, (remaining - width) // width))
        shapes[f"layer{layer}.weight"] = (rows, width)
        shapes[f"layer{layer}.bias"] = (rows,)
        remaining -= rows * width + rows
        layer += 1
    return shapes


def paper_cnn_update(seed: int = 0) -> dict[str, np.ndarray]:
    return heavy_tailed_update(PAPER_CNN_SHAPES, seed)


def entropy_bound_bits(codec: FedZip, update: dict[str, np.ndarray]) -> float:
    """Positions as Bernoulli(kept fraction) entropy + label entropy + centroid bits."""
    bits = 0.0
    for name, array in update.items():
        q = codec.quantize(name, array)
        if q.size == 0:
            continue
        p = q.kept / q.size
        if 0 < p < 1:
            bits += q.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        if q.kept:
            freq = np.bincount(q.labels) / q.kept
            freq = freq[freq > 0]
            bits += q.kept * float(-(freq * np.log2(freq)).sum())
        bits += 32 * q.centroids.size
    return bits


def relative_error(update: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    """``||update - sent||² / ||update||²``: the share of the update's squared norm a payload leaves out."""
    error = sum(float(np.sum((update[n].astype(np.float64) - sent[n]) ** 2)) for n in update)
    return error / sum(float(np.sum(a.astype(np.float64) ** 2)) for a in update.values())


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _peak_extra_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@dataclass
class BenchRow:
    update: str
    parameters: int
    codec: str
    payload_bytes: int
    ratio: float
    bits_per_kept: float | None
    vs_entropy_bound: float | None
    encode_mb_s: float
    decode_mb_s: float
    peak_memory_x_input: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def representation_codecs(names: Iterable[str]) -> list[tuple[str, Compressor]]:
    """The codecs of ``names`` among REPRESENTATION_ROWS: each of the budget's representations alone
    (Top-z is the encodings' rows), and the budget choosing among them."""
    return [(name, REPRESENTATION_ROWS[name]()) for name in names]


REPRESENTATION_ROWS: dict[str, Callable[[], Compressor]] = {
    "fedzip-rank-2": lambda: FedZip(rank=2, clusters=3, iterations=4),
    # dense quantisation: Top-z keeping every entry, what the budget takes at low ratios
    "fedzip-dense-16": lambda: FedZip(keep=1.0, clusters=16),
    "fedzip-budget-16x": lambda: FedZip(budget_ratio=16),
    "fedzip-budget-1000x": lambda: FedZip(budget_ratio=1000),
}
# error feedback's rows by default: the representations that go with it (dense quantisation and
# the 16x budget keep most of the update, and their pricing holds several times its size)
FEEDBACK_REPRESENTATIONS = ("fedzip-rank-2", "fedzip-budget-1000x")


def bench_update(
    label: str,
    update: dict[str, np.ndarray],
    encodings: Iterable[str] = CHOICES,
    keep: float = 0.01,
    clusters: int | str = 3,
    repeat: int = 3,
    progress: Callable[[str], None] | None = None,
    baselines: Iterable[str] = (),
    representations: Iterable[str] = (),
) -> list[BenchRow]:
    """Benchmark each FedZip encoding, the named representation rows (:data:`REPRESENTATION_ROWS`),
    the named baseline compressors and zstd level 1 on one update."""
    import zstandard

    parameters = sum(a.size for a in update.values())
    raw_bytes = 4 * parameters
    megabytes = raw_bytes / 1e6
    rows = []
    raw = b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in update.values())
    compressor = zstandard.ZstdCompressor(level=1)
    decompressor = zstandard.ZstdDecompressor()
    compressed = compressor.compress(raw)
    rows.append(
        BenchRow(
            label,
            parameters,
            "zstd-1",
            len(compressed),
            raw_bytes / len(compressed),
            None,
            None,
            megabytes / _best_time(lambda: compressor.compress(raw), repeat),
            megabytes / _best_time(lambda: decompressor.decompress(compressed), repeat),
            None,
        )
    )
    codecs: list[tuple[str, Compressor]] = [
        (f"fedzip-{e}", FedZip(keep=keep, clusters=clusters, encoding=e)) for e in encodings
    ]
    codecs += representation_codecs(representations)
    for name in baselines:
        config = {"id": name, "keep": keep} if name in ("topk", "stc") else {"id": name}
        codecs.append((name, get_compressor(config)))
    for name, codec in codecs:
        if progress:
            progress(f"{label}: {name}")
        payload, expected = codec.encode_with_approximation(update)
        restored = decode(payload)
        if any(not np.array_equal(restored[k], expected[k]) for k in expected):
            raise AssertionError(f"{name} did not decode to its own approximation")
        kept = sum(int(np.count_nonzero(v)) for v in expected.values())
        top_z = isinstance(codec, FedZip) and codec.rank is None and codec.budget_split is None
        bound = entropy_bound_bits(codec, update) if top_z else None
        rows.append(
            BenchRow(
                label,
                parameters,
                name,
                len(payload),
                raw_bytes / len(payload),
                8 * len(payload) / max(kept, 1),
                8 * len(payload) / bound if bound else None,
                megabytes / _best_time(lambda c=codec: c.encode(update), repeat),
                megabytes / _best_time(lambda p=payload: decode(p), repeat),
                _peak_extra_bytes(lambda c=codec: c.encode(update)) / raw_bytes,
            )
        )
    return rows


def run(
    parameters: int = 25_000_000,
    keep: float = 0.01,
    clusters: int | str = 3,
    encodings: Iterable[str] = CHOICES,
    repeat: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    baselines: Iterable[str] = (),
    representations: Iterable[str] = (),
) -> list[BenchRow]:
    """The standard benchmark: the paper CNN's update and a large one."""
    encodings, baselines, representations = list(encodings), list(baselines), list(representations)
    rows = bench_update(
        "paper-cnn",
        paper_cnn_update(seed),
        encodings,
        keep,
        clusters,
        repeat,
        progress,
        baselines,
        representations,
    )
    if parameters:
        if progress:
            progress(f"generating a {parameters:,}-parameter update")
        update = heavy_tailed_update(large_shapes(parameters), seed)
        label = f"{sum(a.size for a in update.values()) / 1e6:.1f}M"
        rows += bench_update(
            label, update, encodings, keep, clusters, repeat, progress, baselines, representations
        )
    return rows


@dataclass
class FeedbackRow:
    """One way of encoding a large update, with its time and memory."""

    method: str
    parameters: int
    payload_bytes: int
    seconds: float
    peak_extra_x_update: float  # memory allocated beyond the inputs, / the update's size
    held_x_update: float  # update + residual kept between rounds + peak extra, / the update's size

    def to_dict(self) -> dict:
        return asdict(self)


def _out_of_place_feedback(codec: Compressor, update: dict, residual: dict) -> tuple[bytes, dict]:
    """Error feedback as textbooks write it: new arrays for the sum, the decoded part and the rest."""
    corrected = {k: update[k] + residual[k] for k in update}
    payload, sent = codec.encode_with_approximation(corrected)
    return payload, {k: corrected[k] - sent[k] for k in corrected}


def bench_feedback(
    parameters: int = 500_000_000,
    keep: float = 0.01,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    representations: Iterable[str] = FEEDBACK_REPRESENTATIONS,
) -> list[FeedbackRow]:
    """Time and peak memory of encoding a large update with and without error feedback.

    Rows: zstd-1 on the same bytes (reference), FedZip alone, FedZip with
    :class:`~fedzip.ErrorFeedback` in its first round (the residual is
    allocated) and in a later round (worked on in place), and the
    out-of-place formulation for comparison; then the first and a later round
    of each of ``representations`` (REPRESENTATION_ROWS) with error feedback.
    """
    import zstandard

    from .feedback import ErrorFeedback

    if progress:
        progress(f"generating a {parameters:,}-parameter update")
    update = heavy_tailed_update(large_shapes(parameters), seed)
    size = sum(a.nbytes for a in update.values())
    count = sum(a.size for a in update.values())
    codec = FedZip(keep=keep)
    rows: list[FeedbackRow] = []

    def measure(method: str, fn: Callable[[], int], held: float) -> None:
        """``fn`` returns the payload's size; ``held`` is what lives between rounds, in updates."""
        if progress:
            progress(method)
        result: list[int] = []
        start = time.perf_counter()
        peak = _peak_extra_bytes(lambda: result.append(fn()))
        seconds = time.perf_counter() - start
        rows.append(FeedbackRow(method, count, result[0], seconds, peak / size, held + peak / size))

    compressor = zstandard.ZstdCompressor(level=1)
    measure("zstd-1", lambda: sum(len(compressor.compress(a)) for a in update.values()), 1.0)
    measure("fedzip", lambda: len(codec.encode(update)), 1.0)
    sender = ErrorFeedback(codec)
    measure("fedzip+ef, first round", lambda: len(sender.encode(update)), 1.0)
    measure("fedzip+ef, later round (in place)", lambda: len(sender.encode(update)), 2.0)
    residual = sender.residual
    sender.residual = {}  # the reference works on its own copies
    measure(
        "fedzip+ef, out of place (reference)",
        lambda: len(_out_of_place_feedback(codec, update, residual)[0]),
        2.0,
    )
    residual.clear()  # the first rows' state: free before the next codec's
    for name, other in representation_codecs(representations):
        sender = ErrorFeedback(other)
        measure(f"{name}+ef, first round", lambda s=sender: len(s.encode(update)), 1.0)
        measure(f"{name}+ef, later round (in place)", lambda s=sender: len(s.encode(update)), 2.0)
        sender.reset()
    return rows
