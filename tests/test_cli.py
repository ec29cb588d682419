import json
import math

import numpy as np
import pytest

import fedzip
from fedzip import bench
from fedzip.cli import main


def test_paper_cnn_update_has_the_papers_parameter_count():
    update = bench.paper_cnn_update()
    assert sum(a.size for a in update.values()) == 1_199_882


def test_large_shapes_add_up():
    total = sum(math.prod(s) for s in bench.large_shapes(3_000_000).values())
    assert abs(total - 3_000_000) < 4096 * 2


def test_bench_writes_results(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--params",
                "300000",
                "--repeat",
                "1",
                "--encodings",
                "dap,position",
                "--baselines",
                "stc,signsgd",
                "--representations",
                "fedzip-rank-2,fedzip-budget-1000x",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "bench.json").read_text())
    codecs = [
        "zstd-1",
        "fedzip-dap",
        "fedzip-position",
        "fedzip-rank-2",
        "fedzip-budget-1000x",
        "stc",
        "signsgd",
    ]
    assert [r["codec"] for r in rows] == codecs * 2
    for row in rows:
        if row["codec"] == "fedzip-budget-1000x":
            assert row["ratio"] > 900 and row["vs_entropy_bound"] is None  # never over its budget
        if row["codec"] == "fedzip-rank-2":
            assert row["ratio"] > 100 and row["decode_mb_s"] > 0
    for row in rows:
        if row["codec"] == "stc":
            assert row["ratio"] > 100 and row["vs_entropy_bound"] is None
        if row["codec"] == "signsgd":
            assert 30 < row["ratio"] < 32
    dap = [r for r in rows if r["codec"] == "fedzip-dap"]
    for row in dap:
        assert row["ratio"] > 100
        assert 1.0 <= row["vs_entropy_bound"] < 1.1
        assert row["encode_mb_s"] > 0 and row["decode_mb_s"] > 0
    assert (tmp_path / "bench.csv").read_text().startswith("update,parameters,codec")
    assert "fedzip-dap" in (tmp_path / "bench.md").read_text()
    assert "fedzip-dap" in capsys.readouterr().out
    assert main(["bench", "--representations", "fedzip-rank-9"]) == 2


def test_bench_feedback_measures_memory_in_place(tmp_path, capsys):
    assert main(["bench", "--feedback", "--params", "4000000", "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "feedback.json").read_text())}
    assert set(rows) == {
        "zstd-1",
        "fedzip",
        "fedzip+ef, first round",
        "fedzip+ef, later round (in place)",
        "fedzip+ef, out of place (reference)",
        "fedzip-rank-2+ef, first round",
        "fedzip-rank-2+ef, later round (in place)",
        "fedzip-budget-1000x+ef, first round",
        "fedzip-budget-1000x+ef, later round (in place)",
    }
    later = rows["fedzip+ef, later round (in place)"]
    assert later["peak_extra_x_update"] < 0.5  # no full-size copy once the residual exists
    assert rows["fedzip+ef, out of place (reference)"]["peak_extra_x_update"] > 2.5
    assert 1.9 < rows["fedzip+ef, first round"]["held_x_update"] < 2.6
    assert later["payload_bytes"] > 0 and later["seconds"] > 0
    # factors are subtracted from the residual block by block: no copy of the product (97% of this
    # update) either; what remains is fixed-size (the Huffman writer's chunks, ~8 MB: 0.09x at 25M)
    assert rows["fedzip-rank-2+ef, later round (in place)"]["peak_extra_x_update"] < 0.8
    assert rows["fedzip-budget-1000x+ef, later round (in place)"]["payload_bytes"] <= 16_000_000 // 1000
    assert "in place" in capsys.readouterr().out


def test_bench_rejects_bad_options(capsys):
    assert main(["bench", "--encodings", "zip"]) == 2
    assert "unknown encoding" in capsys.readouterr().err
    assert main(["bench", "--baselines", "stc,zip"]) == 2
    assert "unknown baseline(s) zip" in capsys.readouterr().err


def test_inspect_command(tmp_path, capsys):
    payload = fedzip.FedZip(keep=0.1).encode({"w": np.ones((10, 10), np.float32)})
    path = tmp_path / "update.fz"
    path.write_bytes(payload)
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_bytes"] == len(payload) and report["tensors"][0]["kept"] == 10
    path.write_bytes(payload[:-1])
    assert main(["inspect", str(path)]) == 2
    assert "error" in capsys.readouterr().err


def test_inspect_reads_a_keyed_payload_with_the_models_layout(tmp_path, capsys):
    update = {"w": np.ones((10, 10), np.float32), "b": np.ones(10, np.float64)}
    path, model = tmp_path / "update.fz", tmp_path / "model.npz"
    path.write_bytes(fedzip.FedZip(keep=0.1, known_layout=True).encode(update))
    np.savez(model, **update)
    assert main(["inspect", str(path)]) == 2
    assert "layout=" in capsys.readouterr().err
    assert main(["inspect", str(path), "--layout", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 3 and [t["name"] for t in report["tensors"]] == ["w", "b"]
    np.savez(model, b=update["b"], w=update["w"])  # another order: another layout
    assert main(["inspect", str(path), "--layout", str(model)]) == 2
    assert "another model" in capsys.readouterr().err


def test_invalid_options_give_one_line(capsys):
    def one_line():
        err = capsys.readouterr().err.strip()
        assert err.startswith("fedzip") and "error" in err and len(err.splitlines()) == 1

    for argv in (["run", "--rounds", "x"], ["frobnicate"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        one_line()
    for argv in (
        ["run", "--partition", "nope"],
        ["compare", "--codecs", "zip"],
        ["run", "--config", "missing.toml"],
    ):
        assert main(argv) == 2
        one_line()


def test_reproduce_refuses_unknown_runs_and_missing_plans(tmp_path, capsys):
    from research.__main__ import main as reproduce

    plan = tmp_path / "p.toml"
    plan.write_text('[experiment]\nmodel = "mlp"\n\n[[run]]\nname = "a"\ncodec = "none"\n')
    assert reproduce([str(plan), "--only", "b"]) == 2
    assert "unknown runs: b" in capsys.readouterr().err
    assert reproduce([str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    plan.write_text('[experiment]\nmodel = "mlp"\n\n[[run]]\ncodec = "none"\n')
    assert reproduce([str(plan)]) == 2
    assert "unique name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # the installed command has no research verbs
        main(["reproduce", str(plan)])
    assert stopped.value.code == 2


def test_a_run_is_reused_only_when_finished_with_the_same_configuration(tmp_path):
    pytest.importorskip("torch")
    from fedzip.fl.config import ExperimentConfig
    from fedzip.fl.plan import _cached

    cfg = ExperimentConfig(server={"rounds": 5}, out=str(tmp_path))
    summary = {"rounds": 5, "config": cfg.to_dict()}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert _cached(cfg) == summary
    assert _cached(cfg.replace(upload={"id": "fedzip", "keep": 0.5})) is None  # another configuration
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "rounds": 3}))
    assert _cached(cfg) is None  # stopped after round 3 of 5
    older = cfg.to_dict()
    del older["server"]["test_every"]
    (tmp_path / "summary.json").write_text(json.dumps({"rounds": 5, "config": older}))
    assert _cached(cfg) is not None  # an option added later, at its default, changes nothing
    assert _cached(cfg.replace(server={"test_every": 2})) is None
    (tmp_path / "summary.json").write_text(json.dumps({"rounds": 5, "config": {**older, "colour": 1}}))
    assert _cached(cfg) is None  # written by a version with settings this one does not know
