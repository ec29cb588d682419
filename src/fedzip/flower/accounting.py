"""Byte accounting: what each round carried in each direction, as Flower counts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message


@dataclass
class RoundStats:
    """What one training round carried."""

    round: int
    replies: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)
    uplink_bytes: int = 0  # Flower's count_bytes() of every accepted reply, as carried
    raw_bytes: int = 0  # count_bytes() of the same replies with the weights the clients trained
    payload_bytes: int = 0  # len() of the accepted payloads alone
    downlink_bytes: int = 0  # count_bytes() of every train message as sent (all nodes)
    downlink_raw_bytes: int = 0  # the same messages with the global model's weights
    dense_downloads: int = 0  # with compressed downloads: nodes sent the whole model (new or out of sync)
    chain_downloads: int = 0  # ... nodes sent the payloads they missed (more than this round's)
    patch_downloads: int = 0  # ... nodes sent the elements changed since their version
    returning_bytes: int = 0  # count_bytes() of the train messages to nodes that had missed rounds
    sampled: int = 0  # train messages sent (the nodes asked to train)
    first_visits: int = 0  # ... of which to nodes that never trained before
    gaps: list[int] = field(default_factory=list)  # rounds since each other node's previous turn
    aggregated: bool = False  # False when too few replies were accepted to update the model

    def turn(self, turns: dict[int, int], node: int) -> int | None:
        """Count ``node``'s turn in this round; ``turns`` (node -> its last round) is updated.
        Returns the round of the node's previous turn, None for its first."""
        previous = turns.get(node)
        turns[node] = self.round
        if previous is None:
            self.first_visits += 1
        else:
            self.gaps.append(self.round - previous)
        return previous

    @property
    def mean_gap(self) -> float:
        """Mean rounds between a node's turns, over the nodes that trained before (nan: none did)."""
        return sum(self.gaps) / len(self.gaps) if self.gaps else float("nan")

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.uplink_bytes if self.uplink_bytes else float("nan")


def content_bytes(msg: Message) -> int:
    return sum(record_bytes(record) for record in msg.content.values())


def record_bytes(record: Any) -> int:
    """Flower's ``count_bytes()``; for ConfigRecords with an empty string (which it refuses), the same count."""
    try:
        return record.count_bytes()
    except ValueError:
        if not isinstance(record, ConfigRecord):
            raise
    total = 0
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            total += 1 if isinstance(item, bool) else len(item) if isinstance(item, str | bytes) else 8
        total += len(key)
    return total
