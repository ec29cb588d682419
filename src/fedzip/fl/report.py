"""Plots and the Markdown report of a comparison."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .config import ExperimentConfig

TEXT_COLUMNS = ("failure_reasons",)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as handle:
        return [
            {k: float(v) for k, v in row.items() if k not in TEXT_COLUMNS} for row in csv.DictReader(handle)
        ]


def plot_run(records, path: Path, title: str) -> None:
    """Accuracy against rounds and against cumulative uplink MB."""
    tested = [r for r in records if r.accuracy == r.accuracy]  # rounds where the test split was evaluated
    rounds = [r.round for r in tested]
    accuracy = [r.accuracy for r in tested]
    uplink = [r.cumulative_uplink_bytes / 1e6 for r in tested]
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


def plot_runs(
    series: dict[str, list[tuple[float, float]]],
    path: Path,
    xlabel: str,
    title: str,
    log_x: bool = False,
    ylabel: str = "test accuracy",
) -> None:
    """One line of (x, accuracy) points per run, on one figure (points with a NaN left out)."""
    series = {k: [p for p in v if p[0] == p[0] and p[1] == p[1]] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    many = len(series) > 6
    fig, axis = plt.subplots(figsize=(8.5, 4.5) if many else (6, 4))
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10").colors
    markers = "os^vD<>ph*"
    for index, (label, points) in enumerate(series.items()):
        axis.plot(
            *zip(*points, strict=True),
            marker=markers[index % len(markers)],
            markersize=4,
            color=colors[index % len(colors)],
            label=label,
        )
    if log_x:
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.grid(alpha=0.3, which="both")
    if many:
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reach(
    rows: Sequence[dict[str, float]],
    target: float,
    accuracy: str = "accuracy",
    sent: str = "cumulative_uplink_bytes",
    per_round: bool = False,
) -> tuple[int, float] | None:
    """(first round, bytes sent until then) at which ``accuracy`` reaches ``target``; None if never.

    ``sent`` is a cumulative column, or with ``per_round`` one whose rounds are summed.
    """
    total = 0.0
    for row in rows:
        total = total + row[sent] if per_round else row[sent]
        if row["round"] > 0 and row[accuracy] >= target:
            return int(row["round"]), total
    return None


def default_target(summaries: Sequence[dict[str, Any]]) -> float | None:
    """FedAvg's (codec ``none``) final accuracy minus one point, when FedAvg is among the runs."""
    for s in summaries:
        if s["codec"] == "none":
            return s["final_accuracy"] - 0.01
    return None


def _label(summary: dict[str, Any]) -> str:
    """A run's name in a plan, else its codec label."""
    return summary.get("name") or summary["codec"]


def _ratio(value: float | None) -> str:
    return f"{value:.1f}x" if value else "-"


def _figure(value: float | None, spec: str = ".2f", scale: float = 1.0, unit: str = "") -> str:
    """``value * scale`` formatted, or "-" for a figure the run did not record (results of older versions)."""
    return "-" if value is None or value != value else f"{value * scale:{spec}}{unit}"


def write_report(out: Path, summaries: Sequence[dict[str, Any]], target: float | None = None) -> Path:
    """report.md with tables, plus accuracy_vs_round.png and accuracy_vs_uplink.png.

    ``target`` (default: FedAvg's final accuracy minus one point) is the
    accuracy for the rounds- and bytes-to-target columns.
    """
    out.mkdir(parents=True, exist_ok=True)
    runs = {_label(s): read_metrics(Path(s["config"]["out"])) for s in summaries}
    rounds = {label: [(r["round"], r["accuracy"]) for r in rows] for label, rows in runs.items()}
    plot_runs(rounds, out / "accuracy_vs_round.png", "round", "accuracy per round")
    uplink = {
        label: [(r["cumulative_uplink_bytes"] / 1e6, r["accuracy"]) for r in rows if r["round"] > 0]
        for label, rows in runs.items()
    }
    plot_runs(
        uplink,
        out / "accuracy_vs_uplink.png",
        "cumulative uplink (MB, log scale)",
        "accuracy vs bytes sent",
        log_x=True,
    )
    if target is None:
        target = default_target(summaries)

    first = ExperimentConfig.from_dict(summaries[0]["config"])  # a run of 0.1 stored it flat
    data, local, server = first.data, first.training, first.server
    lines = [
        "# fedzip comparison",
        "",
        f"{data.dataset} ({data.partition}), model `{first.model}`, {server.clients} clients, "
        f"fraction {server.fraction}, {server.rounds} rounds, {local.local_epochs} local epoch(s), "
        f"batch {local.batch_size}, {local.optimizer} lr {local.lr}, seed {first.seed}.",
        "",
        *(
            [f"- *final acc.*: mean test accuracy over the last {server.test_last} rounds."]
            if server.test_last > 1
            else []
        ),
        "- *uplink MB*: Flower's `count_bytes()` of every accepted reply as carried (payload, keys, metrics); "
        "*saved* compares it with the same replies holding float32 weights.",
        "- *payload rate*: float32 model size x replies / `len()` of the payloads, headers included.",
        "- *downlink MB*: every train message as Flower carried it to the sampled clients; *down rate* "
        "compares it with the same messages holding the float32 model (1x unless the run compresses "
        "downloads), *up + down* both directions together.",
        "",
        "- *clients/round*: clients asked to train a round; *turns every*: mean rounds between a "
        "client's turns (1: every round).",
        "",
        "| codec | final acc. | best acc. | uplink MB | saved | payload rate | downlink MB | down rate "
        "| up + down rate | clients/round | turns every | failures | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        taking = s.get("participation") or {}  # runs of earlier versions have none
        lines.append(
            f"| {_label(s)} | {s['final_accuracy']:.4f} | {s['best_accuracy']:.4f} "
            f"| {s['uplink_bytes'] / 1e6:.3f} | {s['bandwidth_saved_percent']:.2f}% "
            f"| {_ratio(s['payload_compression_rate'])} | {_figure(s.get('downlink_bytes'), '.3f', 1e-6)} "
            f"| {_ratio(s.get('downlink_compression_ratio'))} | {_ratio(s.get('total_compression_ratio'))} "
            f"| {_figure(taking.get('clients_per_round'), '.1f')} "
            f"| {_figure(taking.get('mean_rounds_between_turns'), '.1f')} "
            f"| {s['failures']} | {s['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Radio energy per client per round on the `{summaries[0]['link']}` link (Huang et al. 2012 power "
        "model, `fedzip.energy`). *Upload*: the transfer alone, against float32 uploads. *Radio saved*: "
        "download and upload transfers against FedAvg's (the download is the float32 model unless the run "
        "compresses it, then what Flower carried). *With tail*: the round as the radio spends it "
        "(promotion, download, the tail through local training, upload, the tail after it).",
        "",
        "| codec | upload J | upload energy saved | radio saved (up + down) | J with tail | saved with tail |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {_label(s)} | {s['upload_joules_per_client_round']:.4f} "
            f"| {s['upload_energy_saved_percent']:.2f}% | {s['radio_energy_saved_percent']:.2f}% "
            f"| {_figure(s.get('round_joules_with_tail'))} "
            f"| {_figure(s.get('round_energy_saved_percent_with_tail'), unit='%')} |"
        )
    if target is not None:
        lines += [
            "",
            f"## To reach {target:.4f} test accuracy",
            "",
            "| codec | rounds | cumulative uplink MB |",
            "|---|---|---|",
        ]
        for s in summaries:
            label = _label(s)
            hit = reach(runs[label], target)
            lines.append(
                f"| {label} | {hit[0]} | {hit[1] / 1e6:.3f} |" if hit else f"| {label} | not reached | - |"
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
