"""What a Flower run sends: bytes per round, per node and per direction, and the radio energy.

    from fedzip.flower import TrafficTracker

    strategy = TrafficTracker(FedAvg(), out="traffic", link="lte")
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

Works around any strategy, compressed or not: it counts the messages the way
Flower does (``count_bytes()`` of their content). Around a
:class:`~fedzip.flower.FedZipStrategy` it takes that strategy's own counts
for training rounds (which also know each reply's uncompressed size and
whether it was accepted) instead of counting again.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..energy import Link, get_link
from .accounting import Transfer, content_bytes, reply_nodes
from .strategy import FedZipStrategy
from .wrapper import StrategyWrapper, inner_chain

PHASES = ("train", "evaluate")
COLUMNS = (
    "round",
    "phase",
    "node",
    "status",
    "down_bytes",
    "down_raw_bytes",
    "up_bytes",
    "up_raw_bytes",
    "seconds",
    "joules",
    "reason",
)


@dataclass
class PhaseTraffic:
    """One phase (train or evaluate) of one round, summed over its nodes."""

    round: int
    phase: str
    nodes: int = 0  # messages sent
    replies: int = 0
    accepted: int = 0
    down_bytes: int = 0
    down_raw_bytes: int = 0
    up_bytes: int = 0  # every reply, as carried
    accepted_up_bytes: int = 0  # the accepted replies, as carried
    up_raw_bytes: int = 0  # the accepted replies with the weights themselves
    joules: float = 0.0  # the nodes' radio energy (each exchange a radio session of its own)

    @property
    def ratio(self) -> float:
        """How much smaller the accepted uploads travelled than uncompressed."""
        return self.up_raw_bytes / self.accepted_up_bytes if self.accepted_up_bytes else float("nan")


class TrafficTracker(StrategyWrapper):
    """Wraps a Flower strategy and records what every message carried.

    Keep it outermost (``TrafficTracker(FedZipStrategy(FedAvg(), ...))``,
    ``TrafficTracker(DifferentialPrivacyServerSideFixedClipping(FedAvg(), ...))``):
    it must see the messages as they leave and arrive.

    Args:
        strategy: the strategy to wrap (any Flower strategy).
        link: the radio link for the energy estimate: a name of
            :data:`fedzip.energy.LINKS` or a :class:`~fedzip.energy.Link`.
        out: a directory; after every phase, ``traffic.csv`` (one row per
            round, phase and node) gets the new rows and ``traffic.json``
            (per round and in total) is rewritten. None: kept in memory only.

    Each exchange (a message and its reply) is costed as one radio session
    with :meth:`~fedzip.energy.Link.round_joules`, the node's time between
    the message's creation and its reply's as the gap between download and
    upload.
    """

    outermost = True

    def __init__(
        self, strategy: Strategy, *, link: str | Link = "lte", out: str | Path | None = None
    ) -> None:
        super().__init__()
        self._check_inner(strategy)
        self.link = link if isinstance(link, Link) else get_link(str(link))
        self.out = Path(out) if out is not None else None
        self.rows: list[tuple[int, str, Transfer]] = []  # (round, phase, transfer), in order
        self.phases: list[PhaseTraffic] = []
        self._fedzip = next((s for s in inner_chain(strategy) if isinstance(s, FedZipStrategy)), None)
        self._sent: dict[int, Message] = {}
        self._pending: dict[int, Transfer] = {}
        self.strategy = strategy  # last: from here on, unknown attributes go to it

    def __repr__(self) -> str:
        return f"TrafficTracker({self.strategy!r}, link={self.link.name!r})"

    def summary(self) -> None:
        log(INFO, "\t├──> traffic tracked on %s%s", self.link.name, f", to {self.out}" if self.out else "")
        self.strategy.summary()

    def start(self, *args: Any, **kwargs: Any) -> Any:
        result = super().start(*args, **kwargs)
        for line in self.table().splitlines():
            log(INFO, "%s", line)
        return result

    # --- the phases -------------------------------------------------------------------------

    def _sending(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent = {m.metadata.dst_node_id: m for m in messages}
        self._pending = {}
        for message in messages:
            size = content_bytes(message)
            transfer = self._pending.setdefault(
                message.metadata.dst_node_id, Transfer(message.metadata.dst_node_id)
            )
            transfer.down_bytes += size
            transfer.down_raw_bytes += size
        return messages

    def _receiving(self, replies: Iterable[Message]) -> list[Message]:
        """Count the replies before the inner strategy sees them (a FedZipStrategy decodes in place)."""
        replies = list(replies)
        for node, reply in zip(reply_nodes(replies, self._sent), replies, strict=True):
            transfer = self._pending.setdefault(node, Transfer(node))
            transfer.answer(reply, self._sent.get(node))
            if not reply.has_error():  # uncompressed: carried and raw alike
                transfer.accepted = True
                transfer.up_raw_bytes = transfer.up_bytes
        return replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return messages if self._fedzip is not None else self._sending(messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._fedzip is None:
            replies = self._receiving(replies)
        try:
            return self.strategy.aggregate_train(server_round, replies)
        finally:
            history = self._fedzip.history if self._fedzip is not None else []
            if history and history[-1].round == server_round:  # its counts know raw sizes and rejections
                self._pending = history[-1].transfers
            self._record(server_round, "train")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._sending(self.strategy.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = self._receiving(replies)
        try:
            return self.strategy.aggregate_evaluate(server_round, replies)
        finally:
            self._record(server_round, "evaluate")

    # --- records ----------------------------------------------------------------------------

    def joules(self, transfer: Transfer) -> float:
        """The node's radio energy for one exchange (J)."""
        seconds = transfer.seconds if math.isfinite(transfer.seconds) else 0.0
        return self.link.round_joules(transfer.down_bytes, transfer.up_bytes, seconds).total

    def _record(self, server_round: int, phase: str) -> None:
        transfers = sorted(self._pending.values(), key=lambda t: t.node)
        self._pending, self._sent = {}, {}
        if not transfers:
            return
        total = PhaseTraffic(server_round, phase)
        for transfer in transfers:
            self.rows.append((server_round, phase, transfer))
            total.nodes += transfer.down_bytes > 0
            total.replies += transfer.replies
            total.accepted += transfer.accepted
            total.down_bytes += transfer.down_bytes
            total.down_raw_bytes += transfer.down_raw_bytes
            total.up_bytes += transfer.up_bytes
            if transfer.accepted:
                total.accepted_up_bytes += transfer.up_bytes
                total.up_raw_bytes += transfer.up_raw_bytes
            total.joules += self.joules(transfer)
        self.phases.append(total)
        if self.out is not None:
            self._write(transfers, server_round, phase)

    def _write(self, transfers: list[Transfer], server_round: int, phase: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "traffic.csv"
        first = len(self.rows) == len(transfers)
        with path.open("w" if first else "a", newline="") as f:
            writer = csv.writer(f)
            if first:
                writer.writerow(COLUMNS)
            for t in transfers:
                writer.writerow(
                    [server_round, phase, t.node, t.status, t.down_bytes, t.down_raw_bytes, t.up_bytes,
                     t.up_raw_bytes, f"{t.seconds:.3f}", f"{self.joules(t):.4f}", t.reason]
                )  # fmt: skip
        (self.out / "traffic.json").write_text(json.dumps(self.report(), indent=1, allow_nan=False) + "\n")

    def totals(self, phase: str | None = None) -> PhaseTraffic:
        """Every recorded round summed (one phase, or both)."""
        total = PhaseTraffic(len({p.round for p in self.phases}), phase or "all")
        for part in self.phases:
            if phase is None or part.phase == phase:
                for f in fields(PhaseTraffic):
                    if f.name not in ("round", "phase"):
                        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
        return total

    def report(self) -> dict[str, Any]:
        """Per round and phase, per node and in total: what ``traffic.json`` holds."""

        def plain(part: PhaseTraffic) -> dict[str, Any]:
            row = {f.name: getattr(part, f.name) for f in fields(PhaseTraffic)}
            row["joules"] = round(row["joules"], 4)
            row["ratio"] = round(part.ratio, 3) if math.isfinite(part.ratio) else None
            return row

        nodes: dict[int, dict[str, float]] = {}
        for _, _, t in self.rows:
            node = nodes.setdefault(t.node, {"exchanges": 0, "down_bytes": 0, "up_bytes": 0, "joules": 0.0})
            node["exchanges"] += 1
            node["down_bytes"] += t.down_bytes
            node["up_bytes"] += t.up_bytes
            node["joules"] += self.joules(t)
        for node in nodes.values():
            node["joules"] = round(node["joules"], 4)
        return {
            "link": self.link.name,
            "rounds": [plain(p) for p in self.phases],
            "total": {phase: plain(self.totals(phase)) for phase in PHASES} | {"all": plain(self.totals())},
            "nodes": {str(k): nodes[k] for k in sorted(nodes)},
        }

    def table(self) -> str:
        """A plain-text summary: each phase's totals and a node's mean per exchange."""
        lines = [
            f"Traffic ({self.link.name}): {len({p.round for p in self.phases})} rounds",
            f"{'phase':<9}{'messages':>9}{'replies':>9}{'down MB':>11}{'up MB':>11}{'up raw MB':>11}"
            f"{'up ratio':>10}{'J/exchange':>12}",
        ]
        for phase in (*PHASES, None):
            part = self.totals(phase)
            if not part.nodes and phase is not None:
                continue
            ratio = f"{part.ratio:.1f}x" if math.isfinite(part.ratio) else "-"
            per = part.joules / part.nodes if part.nodes else float("nan")
            lines.append(
                f"{part.phase:<9}{part.nodes:>9}{part.replies:>9}{part.down_bytes / 1e6:>11.3f}"
                f"{part.up_bytes / 1e6:>11.3f}{part.up_raw_bytes / 1e6:>11.3f}{ratio:>10}{per:>12.3f}"
            )
        return "\n".join(lines)
