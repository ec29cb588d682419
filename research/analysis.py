"""Analysis: numbers read off grouped runs (no rules, no text).

Paired differences, when a curve reaches an accuracy, how much a run still
gains, which FedAvg run trains alike, the runs as points of compression
against accuracy and FedZip's frontier among them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fedzip.fl.plan import Plan
from fedzip.fl.report import reach as reach_on

from .runs import RunSeeds, fedavg_runs

PLATEAU_FRACTION = 0.2  # a run's gain is read over the last fifth of its rounds


def reach(metrics: list[dict[str, float]], target: float) -> tuple[int, float] | None:
    """(first round, cumulative payload bytes) at which validation accuracy reaches ``target``."""
    return reach_on(metrics, target, accuracy="val_accuracy", sent="payload_bytes", per_round=True)


def plateau(group: RunSeeds) -> tuple[float, int, int]:
    """A run's mean validation gain (points) over the last PLATEAU_FRACTION of rounds, and those rounds."""

    curve = group.curve("val_accuracy")
    last = len(curve) - 1
    start = max(1, round(last * (1 - PLATEAU_FRACTION)))
    # three-round means at both ends, so one noisy round does not decide
    end_mean = float(np.mean(curve[max(start, last - 2) : last + 1]))
    start_mean = float(np.mean(curve[start : start + 3]))
    return 100 * (end_mean - start_mean), start, last


def paired(group: RunSeeds, reference: RunSeeds, key: str = "accuracy") -> np.ndarray:
    """Final ``key`` minus the reference's, seed by seed, over the seeds both have."""
    mine, theirs = group.final_by_seed(key), reference.final_by_seed(key)
    return np.array([mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys(), key=str)], dtype=float)


def training_difference(cfg: Any, base: Any) -> str:
    """How ``cfg`` trains its clients otherwise than ``base`` (optimiser, lr and its schedule, local
    epochs, batch, local momentum), e.g. "lr 0.1"; "" when alike: a run is compared with FedAvg trained alike."""
    mine, theirs = cfg.training, base.training
    parts = []
    if mine.optimizer != theirs.optimizer:
        parts.append(mine.optimizer)
    if mine.lr_schedule != theirs.lr_schedule or mine.lr_final != theirs.lr_final:
        parts.append(
            f"{mine.lr_schedule} lr {mine.lr:g}"
            + (f" to {mine.lr_final:g}" if mine.lr_schedule != "constant" else "")
        )
    elif mine.lr != theirs.lr:
        parts.append(f"lr {mine.lr:g}")
    if mine.local_epochs != theirs.local_epochs:
        parts.append(f"{mine.local_epochs} local epochs")
    if mine.batch_size != theirs.batch_size:
        parts.append(f"batch {mine.batch_size}")
    if mine.momentum != theirs.momentum:
        parts.append(f"local momentum {mine.momentum:g}")
    return ", ".join(parts)


def trained_like(fedavgs: Sequence[RunSeeds], like: Any) -> RunSeeds | None:
    """The first of ``fedavgs`` whose clients train as the config ``like`` does (no training_difference)."""
    return next((f for f in fedavgs if not training_difference(f.config, like)), None)


def family(cfg) -> str | None:
    """The series a run belongs to on the figure; None for FedAvg."""
    base = cfg.upload["id"]
    if base == "none":
        return None
    if base == "fedzip":
        return "FedZip"
    names = {
        "stc": "STC",
        "topk": "Top-k",
        "signsgd": "signSGD",
        "qsgd": "QSGD",
        "fp16": "FP16",
        "lowrank": "Low-rank",
    }
    name = names.get(base, base)
    if cfg.error_feedback.enabled and base in ("topk", "signsgd", "lowrank"):
        name = f"EF-{name}" if base == "signsgd" else f"{name}+EF"
    return name


def settings(grouped_plans: Sequence[tuple[Plan, dict[str, RunSeeds]]]) -> dict[str, list[tuple[Plan, dict]]]:
    """Plans pooled by the plan whose FedAvg they use (their own name when they have FedAvg)."""
    pooled: dict[str, list[tuple[Plan, dict[str, RunSeeds]]]] = {}
    for plan, grouped in grouped_plans:
        pooled.setdefault(plan.reference or plan.name, []).append((plan, grouped))
    return pooled


def bytes_to_reach(group: RunSeeds, target: float) -> tuple[float, int]:
    """Mean payload bytes to reach ``target`` over the seeds that do, and how many do."""
    hits = [r for r in (reach(m, target) for m in group.metrics) if r is not None]
    return (float(np.mean([h[1] for h in hits])) if hits else math.nan), len(hits)


@dataclass
class Point:
    """One run of a plan as a point of compression against accuracy (means over its seeds)."""

    plan: str
    name: str
    family: str
    group: RunSeeds
    rate: float  # whole-run uplink compression, mean over seeds
    test: float  # final test accuracy, mean over seeds
    val: float  # final validation accuracy, mean over seeds
    both: float = math.nan  # whole-run compression of uploads and downloads together, mean over seeds
    reference: RunSeeds | None = None  # the FedAvg run whose clients train alike (None: not measured)

    @property
    def seeds(self) -> int:
        return len(self.group.runs)

    @property
    def uploads_only(self) -> bool:
        """Whether only uploads are compressed: compressed downloads change accuracy too, so such runs
        are not points of an uplink curve or picks of an uplink target."""
        return self.group.config.download is None

    @property
    def stateless(self) -> bool:
        """Whether the clients keep nothing between rounds: no residual, and no replica of the model
        for compressed downloads (the server may remember their uploads)."""
        return self.uploads_only and not self.group.config.error_feedback.enabled

    @cached_property
    def delta(self) -> np.ndarray:
        """Final test accuracy minus that of FedAvg trained alike, paired by seed (empty without one)."""
        return np.array([]) if self.reference is None else paired(self.group, self.reference)

    @property
    def compared_seeds(self) -> int:
        """Seeds the verdict rests on: the run's, and no more than FedAvg trained alike has of them."""
        return min(self.seeds, self.delta.size)

    def against(self, main: RunSeeds | None) -> np.ndarray | None:
        """Paired with ``main`` as well when the run trains otherwise than it (None when it does not)."""
        if main is None or self.reference is None or self.reference is main:
            return None
        return paired(self.group, main)


def points(grouped_plans: Sequence[tuple[Plan, dict[str, RunSeeds]]]) -> list[Point]:
    """Every compressed run of these plans as a point, paired with FedAvg trained alike."""
    out = []
    fedavgs = fedavg_runs(*(grouped for _, grouped in grouped_plans))
    for plan, grouped in grouped_plans:
        for name, g in grouped.items():
            kind = family(g.config)
            if kind is None:
                continue
            out.append(
                Point(
                    plan.name,
                    name,
                    kind,
                    g,
                    float(np.nanmean(g.rate())),
                    float(np.mean(g.final("accuracy"))),
                    float(np.mean(g.final("val_accuracy"))),
                    float(np.nanmean(g.both_ways_rate())),
                    trained_like(fedavgs, g.config),
                )
            )
    return out


def uplink_curve(all_points: Sequence[Point]) -> list[Point]:
    """The points an uplink curve shows: a measured rate, downloads not compressed."""
    return [p for p in all_points if math.isfinite(p.rate) and p.uploads_only]
