"""Sparsity warm-up: send more in the first rounds, then settle at the target.

Deep Gradient Compression (Lin et al., ICLR 2018, section 3.3) warms up
sparsity exponentially (75%, 93.75%, 98.4375%, 99.6% sparse) so that the
first, large and fast-changing updates are not cut to the bone while the
error-feedback residual is still empty. Here a round's factor multiplies the
compressor's own kept fraction (or its byte budget); the bytes sent during
warm-up are counted like any others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("exponential", "linear")


@dataclass(frozen=True)
class KeepWarmup:
    """Keep ``start`` in round 1 and move to the compressor's own keep by round ``rounds + 1``.

    Args:
        rounds: warm-up rounds; from round ``rounds + 1`` on the target applies.
        start: kept fraction of round 1.
        kind: ``"exponential"`` (geometric steps, as DGC) or ``"linear"``.
        steps: a schedule of your own instead: the kept fraction of rounds
            1, 2, ... (``rounds``, ``start`` and ``kind`` are then ignored).
        budget_start: for compressors with a byte budget, the multiple of the
            budget sent in round 1 (then down to 1x the same way).
    """

    rounds: int = 4
    start: float = 0.25
    kind: str = "exponential"
    steps: tuple[float, ...] = ()
    budget_start: float = 16.0

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"warm-up rounds must be an int >= 0, got {self.rounds!r}")
        if not self.budget_start >= 1:
            raise ValueError(
                f"warm-up budget_start must be >= 1 (a multiple of the budget), got {self.budget_start!r}"
            )
        if not 0 < self.start <= 1:
            raise ValueError(f"warm-up start must be a kept fraction in (0, 1], got {self.start!r}")
        if self.kind not in KINDS:
            raise ValueError(f"warm-up kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        steps = tuple(float(s) for s in self.steps)
        if not all(0 < s <= 1 for s in steps):
            raise ValueError(f"warm-up steps must be kept fractions in (0, 1], got {self.steps!r}")
        object.__setattr__(self, "steps", steps)

    def keep(self, server_round: int, target: float) -> float:
        """The kept fraction of ``server_round`` (1-based) for a compressor whose own keep is ``target``."""
        index = server_round - 1
        if self.steps:
            return max(self.steps[index], target) if 0 <= index < len(self.steps) else target
        if index < 0 or index >= self.rounds or self.start <= target:
            return target
        progress = index / self.rounds
        if self.kind == "exponential":
            return self.start * (target / self.start) ** progress
        return self.start + (target - self.start) * progress

    def budget_factor(self, server_round: int) -> float:
        """How many times its budget a budgeted compressor may send in ``server_round``."""
        index = server_round - 1
        if index < 0 or index >= self.rounds or self.steps:
            return 1.0
        progress = index / self.rounds
        if self.kind == "exponential":
            return self.budget_start ** (1 - progress)
        return self.budget_start + (1 - self.budget_start) * progress

    def config(self, server_round: int, config: Mapping[str, Any]) -> dict[str, Any]:
        """The compressor config of ``server_round``: its keep, or its byte budget, scaled up."""
        config = dict(config)
        if config.get("budget_bytes"):
            config["budget_bytes"] = round(config["budget_bytes"] * self.budget_factor(server_round))
        elif config.get("budget_ratio"):
            config["budget_ratio"] = max(1.0, config["budget_ratio"] / self.budget_factor(server_round))
        elif "keep" in config:
            config["keep"] = min(1.0, self.keep(server_round, float(config["keep"])))
        else:
            raise ValueError(
                f"a warm-up needs a compressor with a keep or a budget; {config.get('id')!r} has none"
            )
        return config
