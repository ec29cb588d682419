"""The research pipeline end to end: plans run on Flower, resumed, and the documents written."""

import json

import pytest

import needs

needs.simulation()

from research.__main__ import main as reproduce  # noqa: E402

TINY_PLAN = """
[experiment]
model = "mlp"
clients = 2
rounds = 2
batch_size = 10
train_limit = 1000
test_limit = 500
keep = 0.05
transcode = true

[[run]]
name = "fedavg"
codec = "none"

[[run]]
name = "fedzip+ef"
codec = "fedzip-dap+ef"

[[run]]
name = "stc"
codec = "stc"
keep = 0.01
"""


def test_reproduce_runs_a_plan_resumes_it_and_writes_the_document(tmp_path, capsys):
    plan = tmp_path / "tiny.toml"
    plan.write_text(TINY_PLAN)
    doc = tmp_path / "docs" / "results.md"
    args = [str(plan), "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    assert reproduce(args) == 0
    text = doc.read_text()
    for expected in (
        "| fedavg | none |",
        "| fedzip+ef (huffman) |",
        "| fedzip+ef (dap) |",
        "| stc | stc | 0.01 |",
        "## 4. The paper's targets",
        "authors' estimate",
    ):
        assert expected in text
    assert (doc.parent / "results" / "tiny-accuracy_vs_uplink.png").stat().st_size > 0
    summary = tmp_path / "runs" / "tiny" / "stc" / "summary.json"
    first = summary.stat().st_mtime_ns
    capsys.readouterr()

    # Finished runs are reused; --only with --force re-runs just the one named.
    assert reproduce([*args, "--only", "fedavg", "--force"]) == 0
    err = capsys.readouterr().err
    assert "2 of 3 runs done earlier" in err and "tiny/fedavg: running" in err
    assert summary.stat().st_mtime_ns == first


SEEDED_PLAN = """
[experiment]
model = "mlp"
clients = 2
rounds = 3
batch_size = 10
train_limit = 800
validation = 300
test_limit = 400
test_every = 2
keep = 0.05
seeds = [0, 1]

[[run]]
name = "fedavg"
codec = "none"

[[run]]
name = "fedzip+ef"
codec = "fedzip-dap+ef"
"""


def test_a_seeded_plan_runs_every_seed_resumes_and_writes_means(tmp_path, capsys):
    plan = tmp_path / "seeded.toml"
    plan.write_text(SEEDED_PLAN)
    doc = tmp_path / "docs" / "results.md"
    args = [str(plan), "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    assert reproduce([*args, "--seeds", "0"]) == 0  # a first piece: seed 0 only
    assert "Not finished yet" in doc.read_text()
    assert reproduce(args) == 0  # the rest; seed 0 is reused
    err = capsys.readouterr().err
    assert "2 of 4 runs done earlier" in err
    text = doc.read_text()
    assert "Not finished yet" not in text
    assert "| fedavg | none |" in text and "| fedzip+ef | fedzip-dap+ef, keep 0.05, k=3 |" in text
    assert " ± " in text  # means and standard deviations over the two seeds
    assert "plateau rule" in text and "800 training images" in text
    assert "## Client radio energy per round, as the radio spends it" in text
    assert "## Cluster count at low keep" in text
    summary = json.loads((doc.parent / "results" / "summary.json").read_text())
    runs = summary["seeded"]
    assert set(runs) == {"fedavg", "fedzip+ef"} and set(runs["fedzip+ef"]) == {"0", "1"}
    seed1 = runs["fedzip+ef"]["1"]
    assert seed1["rounds"] == 3 and seed1["compression_ratio"] > 20 and seed1["validation_images"] == 300
    metrics = (tmp_path / "runs" / "seeded" / "fedavg" / "seed-1" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in metrics[1:]]
    # the test split only every test_every rounds and after the last; validation every round
    assert [r["accuracy"] == "nan" for r in rows] == [False, True, False, False]
    assert all(0 < float(r["val_accuracy"]) <= 1 for r in rows)
    assert (doc.parent / "results" / "seeded-rounds.png").stat().st_size > 0

    # A plan of other codecs takes its FedAvg reference from the first plan.
    extra = tmp_path / "extra.toml"
    extra.write_text(
        'reference = "seeded"\n'
        + SEEDED_PLAN.split("[[run]]")[0]
        + '[[run]]\nname = "topk"\ncodec = "topk+ef"\n'
    )
    assert reproduce([str(plan), str(extra), "--out", str(tmp_path / "runs"), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "FedAvg reference: the `fedavg` run of plan `seeded`" in text
    topk_row = next(line for line in text.splitlines() if line.startswith("| topk |"))
    assert "| – |" not in topk_row.split("|", 5)[4]  # a paired difference against the reference


LAST_ROUNDS_PLAN = """
[experiment]
model = "mlp"
seeds = [0]

[experiment.data]
train_limit = 600
test_limit = 300
validation = 200

[experiment.training]
batch_size = 10

[experiment.server]
clients = 4
fraction = 0.5
rounds = 4
test_every = 4
test_last = 2

[[run]]
name = "fedavg"
upload = {id = "none"}
"""


def test_sampled_rounds_report_the_mean_of_the_last_rounds(tmp_path):
    """With clients sampled the model moves from round to round: test_last evaluates the test split
    on each of the last rounds, and the summary, the document and its JSON report their mean."""
    plan = tmp_path / "last.toml"
    plan.write_text(LAST_ROUNDS_PLAN)
    doc = tmp_path / "docs" / "results.md"
    assert reproduce([str(plan), "--out", str(tmp_path / "runs"), "--doc", str(doc)]) == 0
    run = tmp_path / "runs" / "last" / "fedavg" / "seed-0"
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    # round 0, then the test split only in the last two rounds (test_every is 4: round 4 anyway)
    assert [r["accuracy"] != "nan" for r in rows] == [True, False, False, True, True]
    tested = [float(r["accuracy"]) for r in rows[3:]]
    validated = [float(r["val_accuracy"]) for r in rows[3:]]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(sum(tested) / 2)
    assert summary["final_val_accuracy"] == pytest.approx(sum(validated) / 2)
    seed = json.loads((doc.parent / "results" / "summary.json").read_text())["last"]["fedavg"]["0"]
    assert seed["final_test_accuracy"] == pytest.approx(sum(tested) / 2)
    assert seed["final_validation_accuracy"] == pytest.approx(sum(validated) / 2)
    text = doc.read_text()
    assert "mean over its last 2 rounds" in text
    row = next(line for line in text.splitlines() if line.startswith("| fedavg |"))
    assert f"{100 * sum(tested) / 2:.2f}" in row
