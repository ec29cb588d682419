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

The inner strategy then aggregates the adjusted replies as usual (FedAvg's
weighted mean of FedVARP's replies is FedVARP's step; FedAdam takes it as its
pseudo-gradient). Tensors outside the payloads (integer buffers) are left as
the clients sent them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..payload import decode

MODES = ("fedvarp", "mifa")


class UpdateMemory:
    """Every client's latest update (as its payload) and their weighted sum."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"server_memory must be one of {', '.join(MODES)} or None, got {mode!r}")
        self.mode = mode
        self.payloads: dict[int, bytes] = {}  # node -> its latest accepted payload
        self.weights: dict[int, float] = {}  # node -> the weight it had then (its examples)
        self._sum: dict[str, np.ndarray] = {}  # sum over nodes of weight * decoded update
        self._total = 0.0

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean of every remembered update (empty before any)."""
        if not self._total:
            return {}
        return {name: total / self._total for name, total in self._sum.items()}

    def nbytes(self) -> int:
        """What the memory holds: the payloads and the running sum."""
        return sum(map(len, self.payloads.values())) + sum(a.nbytes for a in self._sum.values())

    def adjust(
        self, replies: Sequence[tuple[int, float, bytes, dict[str, np.ndarray]]]
    ) -> list[dict[str, np.ndarray]]:
        """Remember this round's updates and return what each reply's update becomes.

        ``replies``: (node, weight, payload, decoded update) of every accepted reply.
        """
        before = self.mean() if self.mode == "fedvarp" else {}
        previous = []
        for node, weight, payload, update in replies:
            old_payload, old_weight = self.payloads.get(node), self.weights.get(node, 0.0)
            old = decode(old_payload) if old_payload is not None else {}
            for name, delta in update.items():
                total = self._sum.setdefault(name, np.zeros(delta.shape, dtype=np.float64))
                total += weight * delta.astype(np.float64)
                if name in old:
                    total -= old_weight * old[name].astype(np.float64)
            self._total += weight - old_weight
            self.payloads[node], self.weights[node] = payload, weight
            previous.append(old)
        if self.mode == "mifa":
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
