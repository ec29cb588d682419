"""A run's results on disk: metrics.csv (one row a round), summary.json, config.toml, accuracy.png."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..encodings import CHOICES
from ..energy import get_link, saved_percent
from .config import ExperimentConfig

# FedZip runs also measure every payload transcoded to each encoding (lossless, so same accuracy)
TRANSCODED = CHOICES


@dataclass
class RoundRecord:
    """One row of metrics.csv."""

    round: int
    accuracy: float  # on the test split (reported, never used to choose anything)
    loss: float
    val_accuracy: float = float("nan")  # on the validation examples held out of training
    val_loss: float = float("nan")
    clients: int = 0
    accepted: int = 0
    failures: int = 0
    uplink_bytes: int = 0  # the replies as Flower carried them (payload, keys, metrics)
    raw_bytes: int = 0  # the same replies with float32 weights
    ratio: float = float("nan")
    cumulative_uplink_bytes: int = 0
    payload_bytes: int = 0  # len() of the compressed payloads alone
    downlink_bytes: int = 0  # the train messages as Flower carried them to every sampled client
    downlink_raw_bytes: int = 0  # the same messages with float32 weights
    # FedZip runs: the same payloads transcoded to each encoding (lossless, so same accuracy)
    huffman_bytes: int = 0
    position_bytes: int = 0
    dap_bytes: int = 0
    seconds: float = 0.0  # the whole round, evaluation included
    train_seconds: float = 0.0  # train messages out to the last reply in (clients' work and messaging)
    aggregate_seconds: float = 0.0  # checking, decoding and averaging the replies
    eval_seconds: float = 0.0  # central evaluation (validation and test)
    client_train_seconds: float = float("nan")  # mean time of one client's local training
    # participation: nodes asked to train, how many for the first time, mean rounds since the
    # others' previous turn; with compressed downloads, how each was brought up to date
    sampled: int = 0
    first_visits: int = 0
    mean_gap: float = float("nan")
    dense_downloads: int = 0
    chain_downloads: int = 0
    patch_downloads: int = 0
    returning_bytes: int = 0  # the train messages to nodes that had missed rounds
    # the server process's resident memory after the round (on the simulation engine it also
    # holds every node's state: residuals, downloaded copies)
    memory_mb: float = float("nan")
    failure_reasons: str = ""  # why replies were rejected or failed ("node N: reason", " | " between)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def last_rounds_mean(values: Sequence[tuple[int, float]], rounds: int) -> float | None:
    """Mean of ``(round, value)`` pairs over the last ``rounds`` rounds run (round 0, the initial
    model, only when nothing else was run), NaN values left out; None when none is left."""
    tail = [pair for pair in values[-rounds:] if pair[0] > 0] or list(values[-1:])
    measured = [value for _, value in tail if value == value]
    return sum(measured) / len(measured) if measured else None


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
    if cfg.download is not None:  # what the clients actually downloaded
        download_j = link.download_joules(round(per_download))
    with_tail = link.round_joules(round(per_download), round(per_reply), train_seconds)
    float32_round = link.round_joules(model_bytes, round(per_reply_raw), train_seconds)
    summary = {
        "codec": cfg.label,
        "rounds": len(rounds),
        "initial_accuracy": records[0].accuracy if records else None,
        # the last round's, or the mean over the last test_last rounds (server.test_last)
        "final_accuracy": last_rounds_mean([(r.round, r.accuracy) for r in records], cfg.server.test_last),
        "best_accuracy": max((r.accuracy for r in records if r.accuracy == r.accuracy), default=None),
        "final_val_accuracy": last_rounds_mean(
            [(r.round, r.val_accuracy) for r in records], cfg.server.test_last
        ),
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
    summary["participation"] = participation(rounds)
    if cfg.upload["id"] == "fedzip":
        summary["encoding_payload_bytes"] = {
            encoding: sum(getattr(r, f"{encoding}_bytes") for r in rounds) for encoding in TRANSCODED
        }
    return summary


def participation(rounds: list[RoundRecord]) -> dict[str, Any]:
    """Who trained: clients asked per round, rounds between a client's turns, what returning clients got."""
    returning = [(r.sampled - r.first_visits, r.mean_gap) for r in rounds if r.sampled > r.first_visits]
    count = sum(n for n, _ in returning)
    return {
        "clients_per_round": sum(r.sampled for r in rounds) / len(rounds) if rounds else None,
        "clients_seen": sum(r.first_visits for r in rounds),
        "mean_rounds_between_turns": sum(n * gap for n, gap in returning) / count if count else None,
        "downloads": {
            form: sum(getattr(r, f"{form}_downloads") for r in rounds) for form in ("chain", "patch", "dense")
        },
        "returning_download_bytes": sum(r.returning_bytes for r in rounds),
    }


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
