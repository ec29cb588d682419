"""Server side: a strategy wrapper that decodes compressed replies."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from ..abc import Compressor
from ..codec import FedZip, decode
from ..errors import FormatError
from ..registry import get_compressor
from . import protocol


@dataclass
class RoundStats:
    """What one training round carried."""

    round: int
    replies: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)
    uplink_bytes: int = 0  # Flower's count_bytes() of every accepted reply, as carried
    raw_bytes: int = 0  # count_bytes() of the same replies with their weights uncompressed
    payload_bytes: int = 0  # len() of the accepted payloads alone

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.uplink_bytes if self.uplink_bytes else float("nan")


def _content_bytes(msg: Message) -> int:
    return sum(record.count_bytes() for record in msg.content.values())


class FedZipStrategy(Strategy):
    """Wraps a Flower strategy so that client uploads travel compressed.

    Train messages carry the compressor's configuration to
    :func:`~fedzip.flower.fedzip_mod`; each reply's payload is decoded
    (refusing more elements than the model has), checked against the global
    model's names and shapes, turned back into trained weights and handed to
    the inner strategy. A reply that fails is logged, counted in
    :attr:`history`, and left out; the round aggregates the rest.
    ``on_payload(round, payload)`` is called for every accepted payload.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        compressor: Compressor | Mapping[str, Any] | str | None = None,
        error_feedback: bool = False,
        on_payload: Callable[[int, bytes], None] | None = None,
    ) -> None:
        super().__init__()
        self.strategy = strategy if strategy is not None else FedAvg()
        if compressor is None:
            compressor = FedZip()
        self.compressor = compressor if isinstance(compressor, Compressor) else get_compressor(compressor)
        self.error_feedback = bool(error_feedback)
        self.on_payload = on_payload
        self.history: list[RoundStats] = []
        self._current: ArrayRecord | None = None

    def __repr__(self) -> str:
        return f"FedZipStrategy({self.strategy!r}, {self.compressor!r}, error_feedback={self.error_feedback})"

    def summary(self) -> None:
        log(INFO, "\t├──> fedzip: %r, error feedback %s", self.compressor, self.error_feedback)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        settings = ConfigRecord(
            {"codec": json.dumps(self.compressor.get_config()), "error-feedback": self.error_feedback}
        )
        for message in messages:
            message.content[protocol.SETTINGS] = settings
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        stats = RoundStats(server_round)
        reference = protocol.from_record(self._current or ArrayRecord())
        max_elements = sum(a.size for a in reference.values())
        accepted = []
        for reply in replies:
            stats.replies += 1
            if reply.has_error():
                stats.failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                continue
            carried = _content_bytes(reply)
            try:
                payload = self._restore(reply, reference, max_elements)
            except (FormatError, ValueError, KeyError, TypeError) as exc:
                reason = f"node {reply.metadata.src_node_id}: {exc}"
                log(WARNING, "FedZipStrategy: rejected a reply in round %d: %s", server_round, reason)
                stats.failures.append(reason)
                continue
            stats.accepted += 1
            stats.uplink_bytes += carried
            stats.raw_bytes += _content_bytes(reply)
            stats.payload_bytes += len(payload)
            if self.on_payload is not None:
                self.on_payload(server_round, payload)
            accepted.append(reply)
        self.history.append(stats)
        log(
            INFO,
            "FedZipStrategy: round %d: %d/%d replies decoded, %d uplink bytes (%.1fx smaller)",
            server_round,
            stats.accepted,
            stats.replies,
            stats.uplink_bytes,
            stats.ratio,
        )
        if not accepted:
            return None, None
        return self.strategy.aggregate_train(server_round, accepted)

    def _restore(self, reply: Message, reference: dict[str, np.ndarray], max_elements: int) -> bytes:
        """Replace the payload in ``reply`` by the client's trained weights; return the payload."""
        if protocol.PAYLOAD not in reply.content.config_records:
            raise ValueError("the reply carries no fedzip payload (is fedzip_mod installed on the client?)")
        record = reply.content.config_records[protocol.PAYLOAD]
        payload = record["payload"]
        if not isinstance(payload, bytes):
            raise ValueError("the payload is not bytes")
        update = decode(payload, max_elements=max_elements)
        passthrough = {}
        if protocol.PASSTHROUGH in reply.content.array_records:
            passthrough = protocol.from_record(reply.content.array_records[protocol.PASSTHROUGH])
        if set(update) | set(passthrough) != set(reference) or set(update) & set(passthrough):
            raise ValueError("the payload's tensor names do not match the global model")
        trained = {}
        for name, base in reference.items():
            value = passthrough[name] if name in passthrough else update[name]
            if value.shape != base.shape:
                raise ValueError(f"tensor {name!r} has shape {value.shape}, the model has {base.shape}")
            if name not in passthrough:
                value = (base + value).astype(base.dtype, copy=False)
            trained[name] = value
        array_key = str(record["array-record"])
        del reply.content[protocol.PAYLOAD]
        reply.content.pop(protocol.PASSTHROUGH, None)
        reply.content[array_key] = protocol.to_record(trained)
        return payload

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
