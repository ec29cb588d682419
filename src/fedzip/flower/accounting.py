"""Byte accounting: what each round carried in each direction, as Flower counts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message


@dataclass
class Transfer:
    """One node's share of a round's phase: what the server sent it and what it sent back.

    Byte counts are Flower's ``count_bytes()`` of the message content as it
    travelled; the ``raw`` counts are the same messages with the weights
    themselves (equal to the carried counts when nothing was compressed).
    """

    node: int
    down_bytes: int = 0
    down_raw_bytes: int = 0
    up_bytes: int = 0
    up_raw_bytes: int = 0  # 0 for a reply that was not accepted (never decoded)
    replies: int = 0
    accepted: bool = False  # the reply reached the inner strategy as weights or metrics
    seconds: float = float("nan")  # from the message's creation to the reply's (training, on the node)
    reason: str = ""  # why the reply was not accepted

    def answer(self, reply: Message, sent: Message | None) -> None:
        """Count ``reply``, the node's answer to ``sent`` (its message this round, if known)."""
        self.replies += 1
        self.up_bytes += content_bytes(reply)
        self.seconds = reply_seconds(sent, reply)
        if reply.has_error():
            self.reason = reply.error.reason

    @property
    def status(self) -> str:
        if not self.replies:
            return "no reply"
        return "accepted" if self.accepted else "rejected"


@dataclass
class RoundStats:
    """What one training round carried, node by node (``transfers``) and in total."""

    round: int
    transfers: dict[int, Transfer] = field(default_factory=dict)  # node -> its messages this round
    failures: list[str] = field(default_factory=list)
    payload_bytes: int = 0  # len() of the accepted payloads alone
    dense_downloads: int = 0  # with compressed downloads: nodes sent the whole model (new or out of sync)
    chain_downloads: int = 0  # ... nodes sent the payloads they missed (more than this round's)
    patch_downloads: int = 0  # ... nodes sent the elements changed since their version
    returning_bytes: int = 0  # count_bytes() of the train messages to nodes that had missed rounds
    sampled: int = 0  # train messages sent (the nodes asked to train)
    first_visits: int = 0  # ... of which to nodes that never trained before
    gaps: list[int] = field(default_factory=list)  # rounds since each other node's previous turn
    aggregated: bool = False  # False when too few replies were accepted to update the model

    def node(self, node: int) -> Transfer:
        """The transfer record of ``node`` (created on first use)."""
        transfer = self.transfers.get(node)
        if transfer is None:
            transfer = self.transfers[node] = Transfer(node)
        return transfer

    @property
    def replies(self) -> int:
        return sum(t.replies for t in self.transfers.values())

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.transfers.values())

    @property
    def uplink_bytes(self) -> int:
        """The accepted replies as carried."""
        return sum(t.up_bytes for t in self.transfers.values() if t.accepted)

    @property
    def raw_bytes(self) -> int:
        """The accepted replies with the weights the clients trained."""
        return sum(t.up_raw_bytes for t in self.transfers.values() if t.accepted)

    @property
    def downlink_bytes(self) -> int:
        """Every train message as sent."""
        return sum(t.down_bytes for t in self.transfers.values())

    @property
    def downlink_raw_bytes(self) -> int:
        """The same messages with the global model's weights."""
        return sum(t.down_raw_bytes for t in self.transfers.values())

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


def reply_nodes(replies: list[Message], sent: dict[int, Message]) -> list[int]:
    """The node each reply answers for: the destination of the message it replies to.

    A reply the SuperLink makes for a node it cannot reach (an error: "Node
    Unavailable") carries the SuperLink's id as its source, not the node's.
    """
    by_id = {m.metadata.message_id: node for node, m in sent.items() if m.metadata.message_id}
    return [by_id.get(r.metadata.reply_to_message_id, r.metadata.src_node_id) for r in replies]


def reply_seconds(sent: Message | None, reply: Message) -> float:
    """Seconds from a message's creation to its reply's: the node's time on it (nan if unknown)."""
    if sent is None:
        return float("nan")
    start, end = sent.metadata.created_at, reply.metadata.created_at
    return end - start if start > 0 and end >= start else float("nan")


def content_bytes(msg: Message) -> int:
    """Flower's count of a message's content (0 for an error reply, which has none)."""
    if not msg.has_content():
        return 0
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
