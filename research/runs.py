"""Runs on disk: a plan's finished runs grouped over their seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedzip.fl.plan import PlannedRun
from fedzip.fl.report import read_metrics
from fedzip.fl.store import last_rounds_mean

# Seeded plans keep their runs next to the document they make.
SEEDED_OUT = "docs/results/runs"
UNSEEDED_OUT = "runs/paper"
# The seeded plans run to convergence; `python -m research experiments/paper-*.toml --doc ...`
# regenerates the earlier 10-round, one-seed document.
DEFAULT_PLANS = (
    "experiments/converge-iid.toml",
    "experiments/converge-dirichlet.toml",
    "experiments/extreme-iid.toml",
    "experiments/extreme-dirichlet.toml",
    "experiments/curve-iid.toml",
    "experiments/curve-dirichlet.toml",
    "experiments/cross-device-iid.toml",
    "experiments/cross-device-dirichlet.toml",
    "experiments/cross-device-1000.toml",
    "experiments/cross-device-pilot.toml",
    "experiments/converge-vit-iid.toml",
    "experiments/converge-vit-dirichlet.toml",
    "experiments/converge-resnet-iid.toml",
    "experiments/converge-resnet-dirichlet.toml",
    "experiments/cross-device-vit-dirichlet.toml",
)
REFERENCE_CODEC = "none"  # FedAvg: uploads as they are


@dataclass
class RunSeeds:
    """One run of a plan over its seeds."""

    name: str
    runs: list[PlannedRun] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[list[dict[str, float]]] = field(default_factory=list)

    @property
    def config(self):
        return self.runs[0].config

    def final(self, key: str) -> np.ndarray:
        return np.array(list(self.final_by_seed(key).values()))

    def final_by_seed(self, key: str) -> dict[int, float]:
        """Per seed, ``key`` in the last round, or its mean over the last ``server.test_last`` rounds."""
        last = self.config.server.test_last
        means = {
            run.seed: last_rounds_mean([(row["round"], row[key]) for row in m], last)
            for run, m in zip(self.runs, self.metrics, strict=True)
        }
        return {seed: math.nan if mean is None else mean for seed, mean in means.items()}

    def payload_bytes(self) -> np.ndarray:
        return np.array([s["payload_bytes"] for s in self.summaries], dtype=float)

    def rate(self) -> np.ndarray:
        """Whole-run compression: float32 size of every accepted update / payload bytes sent."""
        return np.array([s["payload_compression_rate"] or math.nan for s in self.summaries], dtype=float)

    def downloads(self) -> np.ndarray:
        """Per seed, how many train messages (model downloads) the run sent."""
        return np.array([sum(row["clients"] for row in m[1:]) for m in self.metrics], dtype=float)

    def both_ways_rate(self) -> np.ndarray:
        """Float32 uploads and downloads of the run / payload bytes sent up + bytes sent down.

        Downloads travel as float32 weights unless the run compresses them (``downlink``).
        """
        rates = []
        for summary, downloads in zip(self.summaries, self.downloads(), strict=True):
            model = summary["model_bytes"]
            payload = summary["payload_bytes"]
            uploads = (summary["payload_compression_rate"] or 0.0) * payload
            down = summary.get("downlink_bytes", 0) if self.config.download is not None else downloads * model
            rates.append((uploads + downloads * model) / (payload + down) if payload + down else math.nan)
        return np.array(rates, dtype=float)

    def participation(self) -> tuple[float, float]:
        """Mean clients trained a round and mean rounds between a client's turns, over seeds. Runs
        recorded before participation was counted trained every client every round, or (sampled)
        are given the expected gap, 1 / fraction."""
        per_round = float(np.mean([np.mean([row["clients"] for row in m[1:]]) for m in self.metrics]))
        gaps = [(s.get("participation") or {}).get("mean_rounds_between_turns") for s in self.summaries]
        measured = [g for g in gaps if g is not None]
        gap = float(np.mean(measured)) if measured else 1.0 / self.config.server.fraction
        return per_round, gap

    def curve(self, key: str) -> np.ndarray:
        """Mean over seeds, per round (seeds cut to the shortest run)."""
        length = min(len(m) for m in self.metrics)
        return np.nanmean([[row[key] for row in m[:length]] for m in self.metrics], axis=0)


def group(results: Sequence[tuple[PlannedRun, dict[str, Any]]]) -> dict[str, RunSeeds]:
    grouped: dict[str, RunSeeds] = {}
    for run, summary in results:
        entry = grouped.setdefault(run.name, RunSeeds(run.name))
        entry.runs.append(run)
        entry.summaries.append(summary)
        entry.metrics.append(read_metrics(Path(run.config.out)))
    return grouped


def fedavg_runs(*grouped: dict[str, RunSeeds]) -> list[RunSeeds]:
    """Every FedAvg run of these plans, in order."""
    return [g for plan in grouped for g in plan.values() if g.config.upload["id"] == REFERENCE_CODEC]
