"""Figures of the results document (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedzip.fl.plan import Plan
from fedzip.fl.report import plot_runs

from .analysis import Point, uplink_curve
from .runs import RunSeeds
from .targets import PAPER_RATIO, TARGET_POINTS, frontier
from .targets import confirmed as is_confirmed


def plot_plan(plan: Plan, grouped: dict[str, RunSeeds], assets: Path) -> None:
    """A plan's mean validation curves against rounds and against uplink bytes."""
    by_round, by_bytes = {}, {}
    for name, g in grouped.items():
        rounds = g.curve("round")
        accuracy = g.curve("val_accuracy")
        sent = np.cumsum(g.curve("payload_bytes")) / 1e6
        by_round[name] = list(zip(rounds.tolist(), accuracy.tolist(), strict=True))
        by_bytes[name] = list(zip(sent[1:].tolist(), accuracy[1:].tolist(), strict=True))
    plot_runs(
        by_round,
        assets / f"{plan.name}-rounds.png",
        "round",
        f"{plan.name}: mean over seeds",
        ylabel="validation accuracy",
    )
    plot_runs(
        by_bytes,
        assets / f"{plan.name}-uplink.png",
        "cumulative uplink payload (MB)",
        f"{plan.name}: accuracy vs bytes sent",
        log_x=True,
        ylabel="validation accuracy",
    )


def plot_frontier(root: str, all_points: Sequence[Point], reference: RunSeeds | None, path: Path) -> bool:
    """Final test accuracy against whole-run uplink compression, one series per codec family."""
    all_points = uplink_curve(all_points)
    if not all_points:
        return False
    fig, axis = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab10").colors
    families = sorted({p.family for p in all_points}, key=lambda f: (f != "FedZip", f))
    for index, name in enumerate(families):
        members = [p for p in all_points if p.family == name]
        line = frontier(members) if name == "FedZip" else sorted(members, key=lambda p: p.rate)
        # the line joins runs measured on 3 seeds (when there are any); screening runs are hollow dots,
        # and a family measured only on fewer seeds is a line of hollow markers
        confirmed = any(is_confirmed(p) for p in line)
        screening = [p for p in line if not is_confirmed(p)] if confirmed else []
        shown = [p for p in line if p not in screening]
        color = colors[index % len(colors)]
        axis.plot(
            [p.rate for p in shown],
            [100 * p.test for p in shown],
            marker="o",
            markersize=5,
            color=color,
            markerfacecolor=color if confirmed else "white",
            label=name + (" (frontier on validation)" if name == "FedZip" else ""),
        )
        if screening:
            axis.scatter(
                [p.rate for p in screening],
                [100 * p.test for p in screening],
                s=30,
                facecolors="white",
                edgecolors=color,
                zorder=3,
            )
        rest = [p for p in members if p not in line]
        if rest:
            axis.scatter([p.rate for p in rest], [100 * p.test for p in rest], s=14, color=color, alpha=0.4)
    if reference is not None:
        fedavg = 100 * float(np.mean(reference.final("accuracy")))
        axis.axhline(fedavg, color="black", linewidth=1, label="FedAvg")
        axis.axhline(
            fedavg - TARGET_POINTS, color="black", linewidth=1, linestyle="--", label="FedAvg − 1 pt"
        )
    axis.axvline(PAPER_RATIO, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xscale("log")
    axis.set(
        xlabel="whole-run uplink compression (real payload bytes)",
        ylabel="final test accuracy (%)",
        title=f"{root}: accuracy against compression (means over seeds)",
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
