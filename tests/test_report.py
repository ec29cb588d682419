"""Report arithmetic: targets, reaching them, and the Markdown it writes."""

import csv
import json

from fedzip.fl.config import ExperimentConfig
from fedzip.fl.report import default_target, reach, write_report


def rows(accuracies, per_round=100):
    return [
        {"round": r, "accuracy": a, "cumulative_uplink_bytes": r * per_round}
        for r, a in enumerate(accuracies)
    ]


def test_reach_finds_the_first_round_at_or_above_the_target():
    history = rows([0.1, 0.5, 0.79, 0.8, 0.7, 0.9])
    assert reach(history, 0.8) == (3, 300)
    assert reach(history, 0.95) is None
    assert reach(rows([0.9, 0.2]), 0.5) is None  # round 0 (before training) does not count


def test_default_target_is_fedavg_minus_one_point():
    summaries = [{"codec": "stc", "final_accuracy": 0.7}, {"codec": "none", "final_accuracy": 0.85}]
    assert abs(default_target(summaries) - 0.84) < 1e-12
    assert default_target(summaries[:1]) is None


def test_report_tables(tmp_path):
    summaries = []
    for codec, accuracies, per_round in [("none", [0.1, 0.6, 0.8], 1000), ("stc", [0.1, 0.5, 0.795], 3)]:
        out = tmp_path / codec
        out.mkdir()
        with open(out / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["round", "accuracy", "cumulative_uplink_bytes"])
            writer.writeheader()
            writer.writerows(rows(accuracies, per_round))
        summary = {
            "codec": codec,
            "final_accuracy": accuracies[-1],
            "best_accuracy": max(accuracies),
            "uplink_bytes": 2 * per_round,
            "bandwidth_saved_percent": 0.0,
            "payload_compression_rate": 1000 / per_round,
            "upload_joules_per_client_round": 0.5,
            "upload_energy_saved_percent": 0.0,
            "radio_energy_saved_percent": 0.0,
            "failures": 0,
            "wall_seconds": 1.0,
            # stc's downloads compressed 50x: 2 rounds x 2 clients x 1,000 B float32 in 80 B
            "downlink_bytes": 80 if codec == "stc" else 4000,
            "downlink_compression_ratio": 50.0 if codec == "stc" else 1.0,
            "total_compression_ratio": 8000 / (80 + 2 * per_round) if codec == "stc" else 1.0,
            "link": "lte",
            "participation": {"clients_per_round": 2.0, "mean_rounds_between_turns": 1.0}
            if codec == "stc"
            else {},  # a run of an earlier version records none
            "config": json.loads(
                json.dumps(
                    ExperimentConfig(
                        out=str(out),
                        data={"dataset": "d"},
                        server={"clients": 2, "rounds": 2},
                        training={"batch_size": 10, "lr": 0.1},
                    ).to_dict()
                )
            ),
        }
        summaries.append(summary)
    report = write_report(tmp_path / "report", summaries).read_text()
    assert "## To reach 0.7900 test accuracy" in report
    stc_bytes = next(line for line in report.splitlines() if line.startswith("| stc | 0.7950"))
    # uplink 6 B, payload rate 333x, downlink 80 B at 50x, both ways 8,000 B / 86 B
    assert stc_bytes.endswith("| 0.000 | 0.00% | 333.3x | 0.000 | 50.0x | 93.0x | 2.0 | 1.0 | 0 | 1 |")
    assert next(line for line in report.splitlines() if line.startswith("| none |")).endswith(
        "| - | - | 0 | 1 |"
    )
    assert "| none | 2 | 0.002 |" in report and "| stc | 2 | 0.000 |" in report
    report = write_report(tmp_path / "report", summaries, target=0.799).read_text()
    assert "| stc | not reached | - |" in report
    assert (tmp_path / "report" / "accuracy_vs_uplink.png").stat().st_size > 0
    assert "final acc.*: mean" not in report  # the last round's
    summaries[0]["config"]["server"]["test_last"] = 2
    report = write_report(tmp_path / "report", summaries).read_text()
    assert "- *final acc.*: mean test accuracy over the last 2 rounds." in report
