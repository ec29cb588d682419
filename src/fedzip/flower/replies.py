"""Client replies, treated as hostile: record layout, payload, tensors, values, metrics and norms checked
before anything reaches the inner strategy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import Strategy

from .. import batchnorm, exact, wire
from ..abc import Compressor
from ..errors import FormatError
from ..payload import decode_records
from . import protocol
from .wrapper import inner_chain


class Rejected(Exception):
    """A reply that cannot be aggregated; ``configuration`` if a setting is the likely cause."""

    def __init__(self, reason: str, configuration: bool = False) -> None:
        super().__init__(reason)
        self.configuration = configuration


def restore(
    reply: Message, reference: dict[str, np.ndarray], weights_key: str | None, compressor: Compressor
) -> tuple[bytes, tuple[float, dict[str, float]], wire.Layout | None]:
    """Replace the payload in ``reply`` by the client's trained weights (under ``weights_key``).

    Checks the record layout, the container, the tensors against ``reference``
    (the global model the client was sent) and ``compressor``'s encodings, and
    the values once applied. Returns the payload, the norms of the update (of
    its float tensors, and of each integer or bool tensor's change) and, for a
    keyed payload, the layout it was decoded with; raises :class:`Rejected` saying why a reply
    cannot be used.
    """
    content = reply.content
    if protocol.PAYLOAD not in content.array_records:
        if content.array_records:
            raise Rejected(
                "the reply carries weights, not a fedzip payload: add fedzip_mod to the ClientApp, "
                "first in its mods (ClientApp(mods=[fedzip_mod, ...]))",
                configuration=True,
            )
        raise Rejected("the reply carries no fedzip payload", configuration=True)
    extra = set(content.array_records) - {protocol.PAYLOAD}
    if weights_key in content:
        extra.add(weights_key)
    if extra:
        raise Rejected(f"unexpected records in the reply: {sorted(extra)}")
    try:
        payload = protocol.payload_bytes(content.array_records[protocol.PAYLOAD])
    except (ValueError, TypeError, KeyError) as exc:
        raise Rejected(f"unreadable record: {exc}") from exc
    max_elements = sum(a.size for a in reference.values())
    layout = _sender_layout(payload, reference) if wire.is_keyed(payload) else None
    try:
        records = wire.read(payload, max_elements=max_elements, max_tensors=len(reference), layout=layout)
    except (FormatError, ValueError) as exc:  # ValueError: a layout with a dtype the format cannot name
        raise Rejected(f"malformed payload: {exc}") from exc
    check_header(records, reference, compressor)
    try:
        update = decode_records(records)
    except FormatError as exc:
        raise Rejected(f"malformed payload: {exc}") from exc
    trained = {}
    squares = 0.0  # of the float tensors' change
    counted = {}  # norm of each integer or bool tensor's change
    for name, base in reference.items():
        counter = exact.is_exact(update[name])
        if counter:
            value = exact.apply(base, update[name])
            delta = value.astype(np.float64) - base
        else:
            delta = update[name]
            with np.errstate(over="ignore", invalid="ignore"):
                # what the client trained, in the dtype it trained in
                value = (base + delta).astype(delta.dtype, copy=False)
            if not np.isfinite(value).all():
                raise Rejected(f"tensor {name!r} is not finite once the update is applied")
        square = float(np.dot(delta.reshape(-1), delta.reshape(-1).astype(np.float64)))
        if counter:
            counted[name] = math.sqrt(square)
        else:
            squares += square
        trained[name] = value
    del content[protocol.PAYLOAD]
    content[weights_key] = protocol.to_record(trained)
    return payload, (math.sqrt(squares), counted), layout


def _sender_layout(payload: bytes, model: dict[str, np.ndarray]) -> wire.Layout:
    """The layout a keyed payload was made for: the model's, or the model's with float64 tensors
    as float32 (a strategy that keeps a float64 global model, FedAdam's, and clients that train in
    float32). The payload's digest tells which; none matching is left to the reader to refuse."""
    layout = wire.layout_of(model)
    narrowed = tuple(
        (name, np.dtype(np.float32) if dtype == np.float64 else dtype, shape) for name, dtype, shape in layout
    )
    try:
        if narrowed != layout and wire.carried_digest(payload) == wire.digest(narrowed):
            return narrowed
    except ValueError:  # a dtype the format cannot name: the reader says so
        pass
    return layout


def check_header(
    records: list[wire.Record], reference: dict[str, np.ndarray], compressor: Compressor
) -> None:
    """The payload's tensors are the model's, encoded as ``compressor`` encodes (integer and bool
    ones exactly), with the model's shapes."""
    names = [rec.name for rec in records]
    if set(names) != set(reference):
        missing = sorted(set(reference) - set(names))
        unknown = sorted(set(names) - set(reference))
        raise Rejected(
            f"the payload's tensors do not match the global model (missing {missing[:5]}, "
            f"unknown {unknown[:5]}): the client trains another model",
            configuration=True,
        )
    expected = compressor.body_encodings() | {wire.EXACT}
    for rec in records:
        base = reference[rec.name]
        if rec.shape != base.shape:
            raise Rejected(
                f"tensor {rec.name!r} has shape {rec.shape}, the model has {base.shape}",
                configuration=True,
            )
        if (exact.is_exact(base) or rec.dtype.kind != "f") and rec.dtype != base.dtype:
            raise Rejected(
                f"tensor {rec.name!r} is {rec.dtype} in the payload, {base.dtype} in the model: integer "
                "and bool tensors travel in their own dtype (give the server the model as the clients "
                "hold it, e.g. ArrayRecord(model.state_dict()))",
                configuration=True,
            )
        if rec.encoding not in expected:
            raise Rejected(
                f"tensor {rec.name!r} was encoded by another codec than the configured "
                f"{json.dumps(compressor.get_config())}: do clients and server run the same fedzip?",
                configuration=True,
            )


def as_model(arrays: ArrayRecord | None, reference: dict[str, np.ndarray]) -> ArrayRecord | None:
    """The aggregate made a model again, against the model the clients were sent (``reference``):
    its integer and bool tensors in their dtypes (Flower's FedAvg averages them in float64), rounded
    to the nearest, so that the model stays the one clients hold and its counters keep travelling
    exactly; its running variances positive (:func:`fedzip.batchnorm.positive_variance`). A new
    record when anything changed (the inner strategy may keep its own)."""
    if arrays is None:
        return None
    changed = {}
    for name, old in reference.items():
        if name not in arrays:
            continue
        if exact.is_exact(old):
            if np.dtype(arrays[name].dtype) != old.dtype:
                changed[name] = exact.as_dtype(arrays[name].numpy(), old.dtype)
        elif batchnorm.is_variance(name):
            new = arrays[name].numpy()
            kept = batchnorm.positive_variance(new, old)
            if kept is not new:
                changed[name] = kept
    if not changed:
        return arrays
    out = ArrayRecord(dict(arrays.items()))
    for name, array in changed.items():
        out[name] = Array(array)
    return out


def weighting_key(strategy: Strategy) -> str | None:
    """The metric the inner strategy weights replies by (``num-examples`` for FedAvg and kin)."""
    for inner in inner_chain(strategy):
        key = inner.__dict__.get("weighted_by_key")
        if isinstance(key, str):
            return key
    return None


def check_metrics(reply: Message, key: str | None) -> None:
    """One MetricRecord whose weighting metric ``key`` is a positive finite number (None: no check)."""
    if key is None:
        return
    records = list(reply.content.metric_records.values())
    if len(records) != 1:
        raise Rejected(f"expected one MetricRecord in the reply, found {len(records)}")
    weight = records[0].get(key)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (0 < weight < float("inf")):
        raise Rejected(f"the reply's {key!r} must be a positive finite number, got {weight!r}")


def consistent(kept: list, key: str | None, reject: Callable[..., None]) -> list:
    """Replies whose metrics have the layout most replies have; Flower's FedAvg refuses mixed layouts."""
    if key is None or not kept:
        return kept

    def layout(reply: Message) -> tuple:
        ((name, record),) = reply.content.metric_records.items()
        return name, tuple(sorted(record))

    layouts = [layout(reply) for _, reply, *_ in kept]
    majority = max(layouts, key=layouts.count)  # ties: the first seen
    out = []
    for item, shape in zip(kept, layouts, strict=True):
        if shape == majority:
            out.append(item)
        else:
            reject(item[0], item[1], f"its metrics {shape} differ from the other replies' {majority}")
    return out


class NormGuard:
    """Rejects updates whose norm is far above the round's median (``bound`` times it) or above ``limit``.

    The median is taken over at least three replies, so that one reply cannot
    move it; with fewer, the last round's median stands. The change of each
    integer and bool tensor (BatchNorm's counters: counts, not weights) is
    measured apart, else it would hide the scale of the weights' update, and
    held to ``bound`` times its own median (a median of 0 allows no change).
    """

    def __init__(self, bound: float | None = None, limit: float | None = None) -> None:
        self.bound = bound
        self.limit = limit
        self.reference: float | None = None  # the last median of at least three norms
        self.counted: dict[str, float] = {}  # the same, of each integer or bool tensor's change

    def screen(self, norms: list[tuple[float, dict[str, float]]]) -> list[str]:
        """Why each update (the norms of its float tensors and of each integer or bool tensor's
        change) is rejected; "" for those accepted."""
        largest = self.largest([norm for norm, _ in norms])
        for name in norms[0][1] if norms else ():
            median = self._median([counts.get(name, 0.0) for _, counts in norms], self.counted.get(name))
            if median is not None:
                self.counted[name] = median
        most = {} if self.bound is None else {name: self.bound * m for name, m in self.counted.items()}
        reasons = []
        for norm, counts in norms:
            over = next((name for name, count in counts.items() if count > most.get(name, math.inf)), None)
            if norm > largest:
                reasons.append(f"update norm {norm:.4g} exceeds the bound {largest:.4g}")
            elif over is not None:
                reasons.append(
                    f"its integer tensor {over!r} changed by {counts[over]:.4g} (norm), beyond the bound "
                    f"{most[over]:.4g} ({self.bound:g} times the median change)"
                )
            else:
                reasons.append("")
        return reasons

    def largest(self, norms: list[float]) -> float:
        """The largest update norm accepted this round."""
        limit = self.limit if self.limit is not None else float("inf")
        self.reference = self._median(norms, self.reference)
        if self.bound is not None and self.reference is not None and self.reference > 0:
            limit = min(limit, self.bound * self.reference)
        return limit

    def _median(self, values: list[float], last: float | None) -> float | None:
        """The median of ``values`` when one value cannot move it (three or more), else ``last``
        (kept as it is while there is no bound)."""
        if self.bound is None or len(values) < 3:
            return last
        return float(np.median(values))
