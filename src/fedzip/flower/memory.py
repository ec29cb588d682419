"""The server's memory of every client's latest update, for clients that keep nothing.

With a few clients sampled a round, each round's average sees a tenth of the
clients, and error feedback on the clients waits many rounds between turns.
Here the state moves to the server, and costs it little: the latest accepted
payload of each client (kilobytes) and one running sum of their decoded
updates, weighted by examples (one model in float64).

- ``"fedvarp"``: a reply's update ``u`` is replaced by ``u - y + mean(y)``,
  where ``y`` is the client's previous update (0 at its first turn) and
  ``mean(y)`` the mean of every remembered update before this round: SAGA's
  correction, as FedVARP applies it to partial participation (Jhunjhunwala et
  al., UAI 2022). The round's average stays an unbiased estimate of FedAvg's
  step over all clients, and what compression and sampling leave out of one
  round is filled in by the clients' earlier updates.
- ``"mifa"``: every reply becomes the mean of every client's latest update,
  this round's included (MIFA, Gu et al., NeurIPS 2021).
- ``"ef21"``: EF21-PP (Fatkhullin et al. 2021) with the clients' state on the
  server. The train message brings a client its *estimate* (its update as the
  server holds it, compressed with the upload codec); the client uploads its
  update minus the estimate, and its new estimate is the two together. Updates
  that change little from one turn to the next then lose little to
  compression. Every reply becomes the mean of every client's latest
  estimate, as in EF21-PP's step.

An entry is forgotten once it is older than ``STALE_TURNS`` times the mean
rounds between a client's turns (as measured): a client that left, or one
accepted reply that was hostile, cannot keep moving the model round after
round (while kept, an entry counts at weight 1/clients a round: about
``STALE_TURNS`` times what one FedAvg reply counts, in all).

The inner strategy then aggregates the adjusted replies as usual (FedAvg's
weighted mean of FedVARP's replies is FedVARP's step; FedAdam takes it as its
pseudo-gradient). Integer and bool tensors (BatchNorm's counters, sent exactly)
are left as the clients sent them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Message, RecordDict

from .. import exact, wire
from ..abc import Compressor
from ..payload import decode
from . import protocol

MODES = ("fedvarp", "mifa", "ef21")
STALE_TURNS = 3.0  # forget an entry older than this many mean gaps between a client's turns


def check_memory(mode: str | None, error_feedback: bool) -> None:
    """ValueError for a memory mode that is not one, or that conflicts with error feedback."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"server_memory must be one of {', '.join(MODES)} or None, got {mode!r}")
    if mode == "ef21" and error_feedback:
        raise ValueError("server_memory='ef21' replaces error feedback: set error_feedback=False")


class UpdateMemory:
    """Every client's latest update (as its payload) and their weighted sum."""

    def __init__(self, mode: str) -> None:
        check_memory(mode, False)
        self.mode = mode
        # node -> its latest accepted payload (ef21: the estimate it was sent, then its payload)
        self.payloads: dict[int, tuple[bytes, ...]] = {}
        self.sent: dict[int, bytes] = {}  # ef21: the estimate sent to each node this round
        self.weights: dict[int, float] = {}  # node -> the weight it had then (its examples)
        self._sum: dict[str, np.ndarray] = {}  # sum over nodes of weight * decoded update
        self._total = 0.0
        self.rounds: dict[int, int] = {}  # node -> the round of its entry
        self._gaps = [0, 0]  # sum and count of rounds between a node's entries
        self.layout: wire.Layout | None = None  # the model's, for keyed payloads (known_layout=True)

    def forget(self, node: int) -> None:
        """Take ``node``'s entry out of the memory and its sum."""
        weight = self.weights.pop(node, 0.0)
        for name, delta in self._held(node).items():
            self._sum[name] -= weight * delta.astype(np.float64)
        self._total -= weight
        self.payloads.pop(node, None)
        self.rounds.pop(node, None)

    def forget_stale(self, server_round: int) -> None:
        """Forget the entries older than STALE_TURNS mean gaps between a node's entries."""
        total, count = self._gaps
        if count:
            limit = STALE_TURNS * total / count
            for node in [node for node, made in self.rounds.items() if server_round - made > limit]:
                self.forget(node)

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean of every remembered update (empty before any)."""
        if not self._total:
            return {}
        return {name: total / self._total for name, total in self._sum.items()}

    def nbytes(self) -> int:
        """What the memory holds: the payloads and the running sum."""
        held = sum(len(p) for kept in self.payloads.values() for p in kept)
        return held + sum(a.nbytes for a in self._sum.values())

    def _held(self, node: int) -> dict[str, np.ndarray]:
        """The update remembered for ``node`` (empty when none); its integer and bool tensors are
        zeros (the memory holds none of them, an estimate keeps the model's layout)."""
        held: dict[str, np.ndarray] = {}
        for payload in self.payloads.get(node, ()):
            for name, delta in decode(payload, layout=self.layout).items():
                if exact.is_exact(delta):
                    held[name] = np.zeros_like(delta)
                else:
                    held[name] = held[name] + delta if name in held else delta
        return held

    def attach(self, message: Message, compressor: Compressor) -> None:
        """ef21: give ``message`` (its own content) the estimate its node holds on the server."""
        node = message.metadata.dst_node_id
        self.sent.pop(node, None)
        if self.mode != "ef21" or node not in self.payloads:
            return
        estimate = compressor.encode(self._held(node))
        self.sent[node] = estimate
        content = RecordDict(dict(message.content.items()))
        content[protocol.ESTIMATE] = protocol.payload_record(estimate)
        message.content = content

    def adjust(
        self, replies: Sequence[tuple[int, float, bytes, dict[str, np.ndarray]]], server_round: int = 0
    ) -> list[dict[str, np.ndarray]]:
        """Remember this round's updates and return what each reply's update becomes.

        ``replies``: (node, weight, payload, decoded update) of every accepted reply.
        """
        for node, *_ in replies:
            if node in self.rounds and server_round > self.rounds[node]:
                self._gaps[0] += server_round - self.rounds[node]
                self._gaps[1] += 1
        self.forget_stale(server_round)
        before = self.mean() if self.mode == "fedvarp" else {}
        previous = []
        for node, weight, payload, update in replies:
            old, old_weight = self._held(node), self.weights.get(node, 0.0)
            kept = (payload,)
            if self.mode == "ef21" and node in self.sent:  # the upload is update - estimate
                kept = (self.sent[node], payload)
                for name, delta in exact.floats(decode(self.sent.pop(node), layout=self.layout)).items():
                    update[name] = update[name] + delta if name in update else delta
            for name, delta in update.items():
                total = self._sum.setdefault(name, np.zeros(delta.shape, dtype=np.float64))
                total += weight * delta.astype(np.float64)
                if name in old:
                    total -= old_weight * old[name].astype(np.float64)
            self._total += weight - old_weight
            self.payloads[node], self.weights[node] = kept, weight
            self.rounds[node] = server_round
            previous.append(old)
        if self.mode in ("mifa", "ef21"):
            now = self.mean()
            return [{name: now[name].astype(u[name].dtype) for name in u} for *_, u in replies]
        adjusted = []
        for (*_, update), old in zip(replies, previous, strict=True):
            adjusted.append(
                {
                    name: (delta.astype(np.float64) - old.get(name, 0.0) + before.get(name, 0.0)).astype(
                        delta.dtype
                    )
                    for name, delta in update.items()
                }
            )
        return adjusted

    def correct(
        self,
        server_round: int,
        accepted: Sequence[tuple[int, Message, bytes]],
        reference: dict[str, np.ndarray],
        weights_key: str,
        weighted_by: str | None,
    ) -> None:
        """Replace the weights of each accepted reply (index, reply, payload) by what the
        memory makes of its update; ``weighted_by``: the metric the inner strategy weights by."""
        entries = []
        for _, reply, payload in accepted:
            metrics = next(iter(reply.content.metric_records.values()), {})
            weight = float(metrics.get(weighted_by, 1.0)) if weighted_by else 1.0
            update = exact.floats(decode(payload, layout=self.layout))
            entries.append((reply.metadata.src_node_id, weight, payload, update))
        for (_, reply, *_), update in zip(accepted, self.adjust(entries, server_round), strict=True):
            trained = protocol.from_record(reply.content[weights_key])
            for name, delta in update.items():
                trained[name] = (reference[name] + delta).astype(delta.dtype)
            reply.content[weights_key] = protocol.to_record(trained)
