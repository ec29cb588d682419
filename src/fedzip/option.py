"""One way to send a tensor under a byte budget (:mod:`fedzip.candidates` prices them), and the
Pareto front of several."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .encodings import Quantized
from .packing import Packed


@dataclass(frozen=True)
class Option:
    """One way to send a tensor: what it costs at most and exactly what it leaves out."""

    item: Quantized | Packed | Callable[[], Packed]  # factors: built when chosen (see build())
    record_bytes: int  # exact, or an upper bound of the built record's (Top-z)
    error: float  # squared error of the rebuilt tensor
    form: str  # one of fedzip.candidates.REPRESENTATIONS
    detail: str  # its size: "keep 0.0031, 3 clusters", "rank 2, 3 levels", "4 levels"

    def build(self) -> Quantized | Packed:
        """What the codec writes: the quantised tensor, or its factors or levels."""
        return self.item() if callable(self.item) else self.item


def pareto(options: list[Option]) -> list[Option]:
    """Cheapest first, each with less error than every cheaper one."""
    front: list[Option] = []
    for option in sorted(options, key=lambda o: (o.record_bytes, o.error)):
        if not front or option.error < front[-1].error:
            front.append(option)
    return front
