"""Federated runs on Flower's simulation engine (Ray) with real Fashion-MNIST."""

import csv
import json

import pytest

import needs

needs.simulation()

from fedzip.cli import main  # noqa: E402
from fedzip.fl.config import ExperimentConfig  # noqa: E402
from fedzip.fl.runner import run_experiment  # noqa: E402


def small_run(tmp_path, **changes):
    """Three rounds of FedZip (dap, keep 1%, error feedback) on a slice of Fashion-MNIST; ``changes``
    as ExperimentConfig.replace takes them (a section's settings merge with these)."""
    cfg = ExperimentConfig(
        server={"rounds": 3},
        data={"test_limit": 1000},
        upload={"id": "fedzip", "keep": 0.01},
        error_feedback={"enabled": True},
        out=str(tmp_path),
    )
    return cfg.replace(**changes)


def read_metrics(out):
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_client_sending_corrupted_payloads_every_round(tmp_path):
    cfg = small_run(
        tmp_path,
        model="mlp",
        server={"clients": 3},
        data={"train_limit": 3000},
        upload={"id": "fedzip", "keep": 0.05},
        corrupt_clients=[1],
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        assert int(row["failures"]) == 1 and int(row["accepted"]) == 2
        assert float(row["ratio"]) > 50
        assert int(row["uplink_bytes"]) > 0
    assert float(rows[-1]["accuracy"]) > float(rows[0]["accuracy"]) + 0.2
    assert summary["failures"] == 3
    reasons = summary["failure_reasons"]
    assert [r.split(":")[0] for r in reasons] == ["round 1", "round 2", "round 3"]
    assert all("node" in r for r in reasons) and rows[1]["failure_reasons"] == reasons[0].split(": ", 1)[1]
    for name in ("summary.json", "config.toml", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert ExperimentConfig.from_toml(tmp_path / "config.toml") == cfg


def test_compare_writes_a_report(tmp_path, capsys):
    args = [
        "compare",
        "--codecs",
        "none,stc,fedzip-dap+ef",
        "--model",
        "mlp",
        "--clients",
        "2",
        "--keep",
        "0.01",
    ]
    args += [
        "--rounds",
        "2",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--out",
        str(tmp_path),
        "--transcode",
    ]
    assert main(args) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| none |" in report and "| stc |" in report and "| fedzip-dap+ef |" in report
    assert "## To reach" in report and "| upload J |" in report and "| up + down rate |" in report
    for name in ("accuracy_vs_round.png", "accuracy_vs_uplink.png"):
        assert (tmp_path / name).stat().st_size > 0
    none = json.loads((tmp_path / "none" / "summary.json").read_text())
    stc = json.loads((tmp_path / "stc" / "summary.json").read_text())
    dap = json.loads((tmp_path / "fedzip-dap_ef" / "summary.json").read_text())
    assert 0.9 < none["compression_ratio"] < 1.1
    assert dap["uplink_bytes"] * 100 < none["uplink_bytes"]
    assert stc["config"]["error_feedback"]["enabled"] and stc["payload_compression_rate"] > 100
    sizes = dap["encoding_payload_bytes"]
    assert sizes["dap"] == dap["payload_bytes"] < sizes["position"] < sizes["huffman"]
    assert dap["upload_energy_saved_percent"] > 99 > dap["radio_energy_saved_percent"]
    assert "report:" in capsys.readouterr().out


@pytest.mark.slow
def test_paper_cnn_learns_with_fedzip(tmp_path, monkeypatch):
    import torch

    from fedzip.fl import training

    evaluate, threads = training.evaluate, []

    def counted(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", counted)
    cfg = small_run(
        tmp_path,
        model="cnn",
        server={"clients": 2},
        data={"train_limit": 2000, "validation": 500},
        training={"batch_size": 10, "lr": 0.02},
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    accuracies = [float(r["accuracy"]) for r in rows]
    assert accuracies[-1] > accuracies[0] + 0.2
    assert summary["compression_ratio"] >= 50
    assert summary["failures"] == 0
    # the server evaluates the test and validation splits every round, on one thread
    assert threads == [1] * 8


def test_the_minimal_example_app_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "minimal_app.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 5:" in result.stdout and "smaller than float32" in result.stdout


def test_run_command_with_a_baseline(tmp_path, capsys):
    args = ["run", "--codec", "signsgd+ef", "--model", "mlp", "--clients", "2", "--rounds", "2"]
    args += ["--train-limit", "1000", "--test-limit", "300", "--link", "wifi", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "signsgd+ef: final accuracy" in out and "J per client per round on wifi" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["error_feedback"]["enabled"] and summary["failures"] == 0
    assert 25 < summary["payload_compression_rate"] < 32  # one bit per weight, plus headers
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2


def test_bench_fl_times_a_round_next_to_bare_training(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[experiment]\nclients = 2\nbatch_size = 10\ntrain_limit = 400\nvalidation = 100\ntest_limit = 200\n"
    )
    args = ["bench", "--fl", "--fl-config", str(config), "--fl-rounds", "2", "--fl-models", "mlp"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "fl.json").read_text())
    assert [r["model"] for r in rows] == ["mlp"]
    for row in rows:
        assert row["reference"] == min(row["reference_1_thread"], row["reference_2_threads"]) > 0
        assert row["round_seconds"] >= row["round_without_eval"] >= row["train_phase"] > 0
        assert row["evaluation"] > 0 and row["client_training"] > 0
        assert row["ratio"] == pytest.approx(row["round_seconds"] / row["reference"])
        assert row["round_flower_polling"] > 0
        assert (
            row["messaging_floor"] > 0
            and row["messaging_floor_plain"] > 0
            and row["headroom_at_1_25x"] == pytest.approx(0.25 * row["reference"])
        )
    assert "fedzip bench --fl" in capsys.readouterr().out
    assert "rounds/min" in (tmp_path / "fl.md").read_text()


def test_extreme_compression_options_travel_through_a_run(tmp_path):
    """Byte budget, warm-up, momentum correction and a server optimiser, on the simulation engine."""
    cfg = small_run(
        tmp_path,
        model="mlp",
        server={"clients": 2, "rounds": 4, "optimizer": "fedavgm", "lr": 1.0},
        data={"train_limit": 2000},
        training={"batch_size": 20, "momentum": 0.5},
        upload={"id": "fedzip", "budget_ratio": 200.0},
        warmup={"rounds": 2},
        error_feedback={"momentum": 0.9, "clip_norm": 5.0},
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    budget = 4 * 101_770 / 200  # the MLP's float32 update over the ratio, per payload
    per_payload = [int(r["payload_bytes"]) / int(r["accepted"]) for r in rows[1:]]
    assert all(int(r["accepted"]) == 2 for r in rows[1:])
    assert per_payload[0] > 4 * budget  # warm-up: 16x the budget in round 1
    assert all(p <= budget for p in per_payload[2:])  # never over it after the warm-up
    assert summary["final_accuracy"] > float(rows[0]["accuracy"]) + 0.2
    assert summary["config"]["server"]["optimizer"] == "fedavgm"


def test_sampled_clients_with_aged_residuals_on_the_simulation_engine(tmp_path):
    """Half the clients a round: residuals wait for their client's next turn and decay with their age;
    clients train from the model plus half their residual (step-ahead)."""
    cfg = small_run(
        tmp_path,
        model="mlp",
        server={"clients": 4, "fraction": 0.5, "rounds": 4},
        data={"train_limit": 2000},
        training={"batch_size": 20},
        error_feedback={"age_decay": 0.5, "max_age": 2, "step_ahead": 0.5},
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    assert [int(r["accepted"]) for r in rows[1:]] == [2] * 4 and summary["failures"] == 0
    assert summary["final_accuracy"] > float(rows[0]["accuracy"]) + 0.2
    assert [int(r["sampled"]) for r in rows[1:]] == [2] * 4
    assert summary["participation"]["clients_per_round"] == 2.0
    assert all(float(r["memory_mb"]) > 50 for r in rows)  # the server process's resident memory


def test_stateless_clients_with_server_memory_and_downloads_that_catch_up(tmp_path):
    """Half of six clients a round, EF21 with the state on the server, compressed downloads with a
    shared start: nothing fails, returning clients get what they missed (never the dense model)."""
    cfg = small_run(
        tmp_path,
        model="mlp",
        server={"clients": 6, "fraction": 0.5, "rounds": 6, "memory": "ef21", "shared_start": True},
        data={"train_limit": 3000},
        training={"batch_size": 20},
        upload={"id": "fedzip", "rank": 2, "clusters": 3},
        error_feedback={"enabled": False},
        download={"id": "fedzip", "keep": 0.05},
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    assert all(int(r["accepted"]) == 3 and int(r["failures"]) == 0 for r in rows[1:])
    assert summary["final_accuracy"] > float(rows[0]["accuracy"]) + 0.2
    downloads = summary["participation"]["downloads"]
    assert downloads["dense"] == 0 and downloads["chain"] + downloads["patch"] > 0
    assert summary["participation"]["returning_download_bytes"] > 0
    assert summary["participation"]["mean_rounds_between_turns"] > 1
    # The traffic tracker around the run: per node, and per round the same totals as metrics.csv.
    with open(tmp_path / "traffic.csv") as handle:
        traffic = list(csv.DictReader(handle))
    assert {r["phase"] for r in traffic} == {"train"}  # the runner evaluates on the server
    for row in rows[1:]:
        nodes = [t for t in traffic if int(t["round"]) == int(row["round"])]
        assert len(nodes) == 3 and all(t["status"] == "accepted" for t in nodes)
        accepted = [t for t in nodes if t["status"] == "accepted"]
        assert sum(int(t["up_bytes"]) for t in accepted) == int(row["uplink_bytes"])
        assert sum(int(t["up_raw_bytes"]) for t in accepted) == int(row["raw_bytes"])
        assert sum(int(t["down_bytes"]) for t in nodes) == int(row["downlink_bytes"])
        assert sum(int(t["down_raw_bytes"]) for t in nodes) == int(row["downlink_raw_bytes"])
        assert all(float(t["joules"]) > 0 and float(t["seconds"]) > 0 for t in nodes)
    report = json.loads((tmp_path / "traffic.json").read_text())
    assert report["total"]["train"]["up_bytes"] == summary["uplink_bytes"]
    assert len(report["nodes"]) == summary["participation"]["clients_seen"]


def test_the_clients_learning_rate_follows_the_schedule(tmp_path):
    """Cosine to 0: the last round's clients train at lr 0, so the model stands still in that round."""
    cfg = small_run(
        tmp_path,
        model="mlp",
        server={"clients": 2, "rounds": 3},
        data={"train_limit": 2000},
        training={"batch_size": 20, "lr": 0.1, "lr_schedule": "cosine", "lr_final": 0.0},
        upload={"id": "none"},
        error_feedback={"enabled": False},
    )
    run_experiment(cfg, show_progress=False)
    losses = [float(r["loss"]) for r in read_metrics(tmp_path)]
    assert losses[1] < losses[0] - 0.3 and abs(losses[2] - losses[1]) > 1e-3  # rounds 1-2 train
    assert losses[3] == pytest.approx(losses[2], abs=1e-6)


@pytest.mark.parametrize(
    "codec, down, shared",
    [("fedzip-dap+ef", "fedzip", False), ("stc", "stc", False), ("stc", "stc", True)],
)
def test_compressed_downloads_on_the_simulation_engine(tmp_path, codec, down, shared):
    base = small_run(tmp_path, model="mlp")
    cfg = base.replace(
        **base.codec_changes(codec, {"keep": 0.05}),
        server={"clients": 3, "rounds": 4, "shared_start": shared},
        data={"train_limit": 3000},
        training={"batch_size": 20},
        download={"id": down, **({"encoding": "dap"} if down == "fedzip" else {}), "keep": 0.1},
    )
    summary = run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    assert all(int(r["accepted"]) == 3 and int(r["failures"]) == 0 for r in rows[1:])
    # round 1 sends the model dense, or with a shared start only its checksum; later rounds what changed
    first = int(rows[1]["downlink_bytes"]) / int(rows[1]["downlink_raw_bytes"])
    assert first < 0.01 if shared else first > 0.9
    for row in rows[2:]:
        assert int(row["downlink_bytes"]) * 5 < int(row["downlink_raw_bytes"])
    assert summary["downlink_compression_ratio"] > 2.5 and summary["total_compression_ratio"] > 3
    assert summary["final_accuracy"] > float(rows[0]["accuracy"]) + 0.2


def test_compare_runs_a_plan_each_run_with_its_own_options(tmp_path, capsys):
    plan = tmp_path / "mini.toml"
    plan.write_text(
        '[experiment]\nmodel = "mlp"\nclients = 2\nrounds = 2\ntrain_limit = 2000\ntest_limit = 500\n'
        "keep = 0.01\n\n"
        '[[run]]\nname = "fedavg"\ncodec = "none"\n\n'
        '[[run]]\nname = "fedzip-500x"\ncodec = "fedzip-dap+ef"\nbudget_ratio = 500.0\n'
    )
    out = tmp_path / "out"
    assert main(["compare", "--plan", str(plan), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| fedavg |" in report and "| fedzip-500x |" in report
    budgeted = json.loads((out / "mini" / "fedzip-500x" / "summary.json").read_text())
    assert (
        budgeted["config"]["upload"]["budget_ratio"] == 500.0 and budgeted["payload_compression_rate"] >= 500
    )
    # options belong to the plan: a command-line option next to --plan is refused
    assert main(["compare", "--plan", str(plan), "--rounds", "3", "--out", str(out)]) == 2
    assert "--rounds cannot be given with it" in capsys.readouterr().err


class SilentGrid:
    """Nodes that are listed but never answer: what a strategy sees when the engine's workers died."""

    def __init__(self, nodes):
        self.nodes, self.rounds = list(range(1, nodes + 1)), 0

    def get_node_ids(self):
        return self.nodes

    def send_and_receive(self, messages, *, timeout=None):
        self.rounds += bool(list(messages))  # train messages (the runner evaluates on the server)
        return []

    def __getattr__(self, name):
        raise AttributeError(name)


@pytest.mark.usefixtures("task_identity")
def test_a_run_that_gets_no_reply_stops_after_three_rounds(tmp_path):
    from fedzip.fl import apps

    cfg = small_run(tmp_path, model="mlp", server={"clients": 2, "rounds": 50}, data={"train_limit": 600})
    grid = SilentGrid(2)
    with pytest.raises(RuntimeError, match="no node replied in rounds 1-3"):
        apps.serve(grid, cfg, out=tmp_path)
    assert grid.rounds == apps.SILENT_ROUNDS  # not 50 rounds of waiting
    assert [int(r["round"]) for r in read_metrics(tmp_path)] == [0, 1, 2, 3]  # what finished is written


def test_a_residual_cnn_at_a_thousandth_in_keyed_payloads(tmp_path):
    """ResNet's 60 tensors: their names alone are over 1000x's budget; keyed payloads fit it, the
    integer counters travel inside them, and transcoding keeps the payloads keyed."""
    from fedzip.fl import models

    cfg = small_run(
        tmp_path,
        model="resnet",
        server={"clients": 2, "rounds": 2},
        data={"train_limit": 400, "test_limit": 200},
        upload={"id": "fedzip", "budget_ratio": 1000.0, "known_layout": True},
        transcode=True,
    )
    run_experiment(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    state = models.build("resnet", 10, 0).state_dict()
    floats = sum(v.numel() * v.element_size() for v in state.values() if v.is_floating_point())
    assert any(not v.is_floating_point() for v in state.values())  # num_batches_tracked
    for row in rows[1:]:
        assert int(row["accepted"]) == 2
        assert int(row["payload_bytes"]) <= 2 * floats // 1000
        # on the wire, beside each payload: its record's key and the metrics, nothing of the counters
        assert int(row["uplink_bytes"]) - int(row["payload_bytes"]) <= 2 * 100
    assert 0.0 <= float(rows[-1]["accuracy"]) <= 1.0
