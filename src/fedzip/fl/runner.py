"""Run experiments on Flower's simulation engine and write their results."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..energy import get_link, saved_percent
from .apps import TRANSCODED, RoundRecord, serve
from .config import ExperimentConfig
from .data import find_data_dir


def summarize(cfg: ExperimentConfig, records: list[RoundRecord], seconds: float) -> dict[str, Any]:
    """Totals of a run: accuracy, bytes, compression and client radio energy."""
    from .models import build, parameter_count

    rounds = [r for r in records if r.round > 0]
    uplink = sum(r.uplink_bytes for r in rounds)
    raw = sum(r.raw_bytes for r in rounds)
    payload = sum(r.payload_bytes for r in rounds)
    accepted = sum(r.accepted for r in rounds)
    model_bytes = 4 * parameter_count(build(cfg.model))
    link = get_link(cfg.link)
    per_reply = uplink / accepted if accepted else 0.0
    per_reply_raw = raw / accepted if accepted else 0.0
    upload_j = link.upload_joules(round(per_reply))
    float32_j = link.upload_joules(round(per_reply_raw))
    download_j = link.download_joules(model_bytes)  # the global model travels uncompressed
    measured = [r.client_train_seconds for r in rounds if r.client_train_seconds == r.client_train_seconds]
    train_seconds = cfg.energy_train_seconds or (sum(measured) / len(measured) if measured else 0.0)
    downlink = sum(r.downlink_bytes for r in rounds)
    downlink_raw = sum(r.downlink_raw_bytes for r in rounds)
    messages = sum(r.clients for r in rounds)
    per_download = downlink / messages if messages and downlink else model_bytes
    float32_download_j = download_j
    if cfg.downlink:  # what the clients actually downloaded
        download_j = link.download_joules(round(per_download))
    with_tail = link.round_joules(round(per_download), round(per_reply), train_seconds)
    float32_round = link.round_joules(model_bytes, round(per_reply_raw), train_seconds)
    summary = {
        "codec": cfg.label,
        "rounds": len(rounds),
        "initial_accuracy": records[0].accuracy if records else None,
        "final_accuracy": records[-1].accuracy if records else None,
        "best_accuracy": max((r.accuracy for r in records if r.accuracy == r.accuracy), default=None),
        "final_val_accuracy": records[-1].val_accuracy
        if records and records[-1].val_accuracy == records[-1].val_accuracy
        else None,
        "final_loss": records[-1].loss if records else None,
        "uplink_bytes": uplink,
        "raw_bytes": raw,
        "compression_ratio": raw / uplink if uplink else None,
        "payload_bytes": payload,
        "payload_compression_rate": accepted * model_bytes / payload if payload else None,
        "model_bytes": model_bytes,
        "bandwidth_saved_percent": saved_percent(raw, uplink),
        "link": link.name,
        "upload_joules_per_client_round": upload_j,
        "float32_upload_joules_per_client_round": float32_j,
        "upload_energy_saved_percent": saved_percent(float32_j, upload_j),
        "download_joules_per_client_round": download_j,
        "radio_energy_saved_percent": saved_percent(float32_j + float32_download_j, upload_j + download_j),
        # the round as a radio spends it: promotion, download, tail through training, upload, tail
        "downlink_bytes": downlink,
        "downlink_raw_bytes": downlink_raw,
        "downlink_compression_ratio": downlink_raw / downlink if downlink else None,
        "total_bytes": uplink + downlink,
        "total_compression_ratio": (raw + downlink_raw) / (uplink + downlink) if uplink + downlink else None,
        "energy_train_seconds": train_seconds,
        "round_joules_with_tail": with_tail.total,
        "float32_round_joules_with_tail": float32_round.total,
        "round_energy_saved_percent_with_tail": saved_percent(float32_round.total, with_tail.total),
        "round_energy_breakdown": {
            "download": with_tail.download,
            "upload": with_tail.upload,
            "promotion": with_tail.promotion,
            "tail": with_tail.tail,
        },
        "failures": sum(r.failures for r in rounds),
        "failure_reasons": [
            f"round {r.round}: {reason}"
            for r in rounds
            if r.failure_reasons
            for reason in r.failure_reasons.split(" | ")
        ],
        "wall_seconds": round(seconds, 2),
        "config": cfg.to_dict(),
    }
    if cfg.codec.startswith("fedzip"):
        summary["encoding_payload_bytes"] = {
            encoding: sum(getattr(r, f"{encoding}_bytes") for r in rounds) for encoding in TRANSCODED
        }
    return summary


def write_results(
    out: Path, cfg: ExperimentConfig, records: list[RoundRecord], seconds: float, plot: bool = True
) -> dict[str, Any]:
    """metrics.csv, summary.json, config.toml and (with ``plot``) accuracy.png in ``out``."""
    from .report import plot_run

    out.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in records]
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RoundRecord.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(cfg, records, seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.toml").write_text(cfg.to_toml())
    if plot:
        plot_run(records, out / "accuracy.png", title=cfg.label)
    return summary


def run_experiment(
    cfg: ExperimentConfig, show_progress: bool = True, fast_poll: bool = True
) -> dict[str, Any]:
    """One run on Flower's simulation engine (Ray), results written to ``cfg.out``.

    ``fast_poll`` shortens the engine's message polling (see ``polling``);
    ``False`` keeps Flower's own intervals (``fedzip bench --fl`` compares both).
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .apps import client_app
    from .polling import fast_polling, shorten_grid_polling

    find_data_dir(cfg.data_dir or None)  # fail early, with the install hint
    records: list[RoundRecord] = []
    errors: list[BaseException] = []
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    task = progress.add_task("run", total=cfg.rounds, label=cfg.label, status="starting")

    def on_round(record: RoundRecord) -> None:
        status = f"acc {record.accuracy:.4f}"
        if record.round:
            status += (
                f" | up {record.uplink_bytes / 1e6:.3f} MB | {record.ratio:.1f}x | fail {record.failures}"
            )
        progress.update(task, completed=record.round, status=status)

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        if fast_poll:
            shorten_grid_polling(grid)
        try:
            records.extend(serve(grid, cfg, on_round, out=Path(cfg.out)))
        except BaseException as exc:  # surfaced after the simulation stops
            errors.append(exc)
            raise

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # progress shows rounds and failures; details go to metrics.csv
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = time.perf_counter()
    try:
        with progress, fast_polling() if fast_poll else contextlib.nullcontext():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"log_to_driver": False, "include_dashboard": False},
                },
            )
    finally:
        flwr_logger.setLevel(level)
    if errors:
        raise RuntimeError(f"the server app failed: {errors[0]}") from errors[0]
    if len(records) != cfg.rounds + 1:
        raise RuntimeError(f"the simulation stopped after {max(len(records) - 1, 0)} of {cfg.rounds} rounds")
    return write_results(Path(cfg.out), cfg, records, time.perf_counter() - started)


def compare(
    cfg: ExperimentConfig,
    codecs: Sequence[str],
    out: Path,
    show_progress: bool = True,
    target: float | None = None,
) -> list[dict[str, Any]]:
    """Run each codec on the same data, partition and seed; write report.md and plots."""
    from .config import parse_codec
    from .report import write_report

    summaries = []
    for name in codecs:
        codec, feedback = parse_codec(name)
        run_cfg = cfg.replace(codec=codec, error_feedback=feedback, out=str(out / name.replace("+", "_")))
        summaries.append(run_experiment(run_cfg, show_progress))
    write_report(out, summaries, target)
    return summaries
