"""Plots and the Markdown report of a comparison."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_run(records, path: Path, title: str) -> None:
    """Accuracy against rounds and against cumulative uplink MB."""
    rounds = [r.round for r in records]
    accuracy = [r.accuracy for r in records]
    uplink = [r.cumulative_uplink_bytes / 1e6 for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rounds, accuracy, marker="o")
    left.set(xlabel="round", ylabel="test accuracy", title=title)
    right.plot(uplink, accuracy, marker="o")
    right.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy", title="accuracy vs bytes sent")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_runs(
    series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, title: str, log_x: bool = False
) -> None:
    """One line of (x, accuracy) points per run, on one figure."""
    fig, axis = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        axis.plot(*zip(*points, strict=True), marker="o", label=label)
    if log_x:
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel="test accuracy", title=title)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, summaries: Sequence[dict[str, Any]]) -> Path:
    """report.md with a table, plus accuracy_vs_round.png and accuracy_vs_uplink.png."""
    out.mkdir(parents=True, exist_ok=True)
    runs = {s["codec"]: _read_metrics(Path(s["config"]["out"])) for s in summaries}
    rounds = {label: [(r["round"], r["accuracy"]) for r in rows] for label, rows in runs.items()}
    _plot_runs(rounds, out / "accuracy_vs_round.png", "round", "accuracy per round")
    uplink = {
        label: [(r["cumulative_uplink_bytes"] / 1e6, r["accuracy"]) for r in rows if r["round"] > 0]
        for label, rows in runs.items()
    }
    _plot_runs(
        uplink,
        out / "accuracy_vs_uplink.png",
        "cumulative uplink (MB, log scale)",
        "accuracy vs bytes sent",
        log_x=True,
    )

    first = summaries[0]["config"]
    lines = [
        "# fedzip comparison",
        "",
        f"{first['dataset']} ({first['partition']}), model `{first['model']}`, {first['clients']} clients, "
        f"fraction {first['fraction']}, {first['rounds']} rounds, {first['local_epochs']} local epoch(s), "
        f"batch {first['batch_size']}, {first['optimizer']} lr {first['lr']}, seed {first['seed']}.",
        "Uplink bytes are Flower's `count_bytes()` of each reply as carried; the ratio compares them "
        "with the same replies holding uncompressed weights.",
        "",
        "| codec | final accuracy | best accuracy | total uplink MB | compression ratio | failures | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ratio = s["compression_ratio"]
        lines.append(
            f"| {s['codec']} | {s['final_accuracy']:.4f} | {s['best_accuracy']:.4f} | {s['uplink_bytes'] / 1e6:.3f} "
            f"| {ratio:.1f}x | {s['failures']} | {s['wall_seconds']:.0f} |"
            if ratio
            else f"| {s['codec']} | {s['final_accuracy']:.4f} | {s['best_accuracy']:.4f} | 0 | - | {s['failures']} | {s['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "![accuracy per round](accuracy_vs_round.png)",
        "",
        "![accuracy vs uplink](accuracy_vs_uplink.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
