"""Experiment configs: sections that check themselves, codec tables checked by their compressor,
TOML in the same shape, the flat configs of fedzip 0.1 migrated with their meaning, and the CLI
options made from the fields."""

import pytest

pytest.importorskip("torch")

from fedzip import FedZip, get_compressor
from fedzip.cli import build_parser
from fedzip.cli.experiments import experiment_config
from fedzip.fl.config import ExperimentConfig, parse_codec
from fedzip.fl.plan import _cached, load_plan


def test_defaults_are_the_librarys():
    cfg = ExperimentConfig()
    assert cfg.compressor() == FedZip()  # no option of the codec's own: its defaults
    assert cfg.label == "fedzip-dap" and cfg.download is None and not cfg.error_feedback.enabled
    lowrank = ExperimentConfig(upload={"id": "lowrank"})
    assert lowrank.compressor() == get_compressor("lowrank")  # 8 levels, rank 1, as LowRank()


def test_sections_take_dicts_and_replace_changes_one_setting():
    cfg = ExperimentConfig(training={"lr": 0.1}, server={"rounds": 3})
    assert cfg.training.lr == 0.1 and cfg.training.batch_size == 32 and cfg.server.rounds == 3
    other = cfg.replace(training={"batch_size": 10}, seed=4)
    assert (other.training.lr, other.training.batch_size, other.seed) == (0.1, 10, 4)
    assert cfg.training.batch_size == 32  # unchanged: configs are values


def test_config_round_trips_through_toml(tmp_path):
    cfg = ExperimentConfig(
        upload={"id": "fedzip", "encoding": "huffman", "budget_ratio": 800.0, "budget_split": "uniform"},
        download={"id": "fedzip", "rank": 5, "clusters": 4, "iterations": 4},
        error_feedback={"enabled": True, "momentum": 0.9},
        server={"rounds": 3, "shared_start": True},
        corrupt_clients=[1],
    )
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert "[experiment.upload]" in path.read_text() and "[experiment.training]" in path.read_text()
    loaded = ExperimentConfig.from_toml(path)
    assert loaded == cfg and loaded.upload == cfg.upload
    assert ExperimentConfig.from_toml(path, server={"rounds": 7}).server.rounds == 7


def test_equal_configs_are_those_that_build_the_same_compressors():
    assert ExperimentConfig(upload={"id": "fedzip"}) == ExperimentConfig(upload={"id": "fedzip", "keep": 0.2})
    assert ExperimentConfig(upload={"id": "fedzip"}) != ExperimentConfig(upload={"id": "fedzip", "keep": 0.1})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server": {"rounds": 0}}, "rounds"),
        ({"model": "vgg"}, "model"),
        ({"data": {"partition": "x"}}, "partition"),
        ({"colour": 1}, "unknown config key"),
        ({"training": {"colour": 1}}, "unknown key"),
        ({"upload": {"id": "zip"}}, "unknown compressor"),
        ({"upload": {"keep": 0.1}}, "id"),
        ({"upload": {"id": "fedzip", "keep": 0}}, "keep"),
        ({"upload": {"id": "fedzip", "levels": 4}}, "unknown option"),  # a QSGD option
        ({"upload": {"id": "fedzip", "keep": 0.1, "budget_ratio": 100.0}}, "keep is not used"),
        ({"upload": {"id": "fedzip", "rank": 2, "budget_ratio": 1000.0}}, "rank"),
        ({"upload": {"id": "lowrank", "clusters": 1}}, "clusters"),
        ({"download": {"id": "stc", "rank": 4}}, "download codec"),
        ({"download": {"id": "fedzip", "iterations": 4}}, "iterations"),
        ({"upload": {"id": "stc"}}, "residual"),  # STC without error feedback
        ({"error_feedback": {"momentum": 0.9}}, "enable error feedback"),
        ({"error_feedback": {"max_age": 3}}, "enable error feedback"),
        ({"error_feedback": {"enabled": True, "age_decay": 0}}, "age_decay"),
        ({"error_feedback": {"step_ahead": 0.5}}, "enable error feedback"),
        ({"error_feedback": {"enabled": True, "step_ahead": 1.5}}, "step_ahead"),
        ({"server": {"shared_start": True}}, "download"),
        ({"server": {"test_last": 0}}, "test_last must be an integer >= 1"),
        ({"link": "5g"}, "link"),
        ({"training": {"lr_schedule": "step"}}, "lr_schedule"),
        ({"training": {"lr_schedule": "cosine", "lr": 0.05, "lr_final": 0.1}}, "lr_final"),
        ({"training": {"lr_final": 0.01}}, "schedule"),
        ({"corrupt_clients": [10]}, "corrupt_clients"),
        ({"upload": {"id": "signsgd"}, "warmup": {"rounds": 3}}, "warm-up"),
    ],
)
def test_invalid_configs_say_what_to_change(values, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(values)


@pytest.mark.parametrize(
    ("name", "config", "feedback"),
    [
        ("none", {"id": "none"}, False),
        ("fedzip-dap+ef", {"id": "fedzip", "encoding": "dap"}, True),
        ("fedzip-auto", {"id": "fedzip", "encoding": "auto"}, False),
        ("stc", {"id": "stc"}, True),  # STC needs its residual
        ("lowrank+ef", {"id": "lowrank"}, True),
    ],
)
def test_codec_names(name, config, feedback):
    assert parse_codec(name) == (config, feedback)


@pytest.mark.parametrize("name", ["zip", "stc+ec", "fedzip", "fedzip-lzma", "fedzip-dap+ef+ef"])
def test_unknown_codec_names(name):
    with pytest.raises(ValueError, match="unknown codec"):
        parse_codec(name)


def test_with_codec_keeps_the_options_of_the_same_compressor():
    cfg = ExperimentConfig(upload={"id": "fedzip", "keep": 0.01, "clusters": 4})
    assert cfg.with_codec("fedzip-huffman+ef").compressor() == FedZip(
        keep=0.01, clusters=4, encoding="huffman"
    )
    assert cfg.with_codec("stc", {"keep": 0.005}).upload == {"id": "stc", "keep": 0.005}


# --- fedzip 0.1's flat configs ---------------------------------------------------------------


def test_a_flat_config_keeps_its_meaning():
    cfg = ExperimentConfig.from_dict(
        {"codec": "fedzip-dap+ef", "rounds": 3, "lr": 0.1, "local_momentum": 0.5}
    )
    assert cfg.compressor() == FedZip(keep=0.01, clusters=3, encoding="dap")  # 0.1's defaults
    assert cfg.error_feedback.enabled and cfg.server.rounds == 3
    assert (cfg.training.lr, cfg.training.momentum) == (0.1, 0.5)
    stc = ExperimentConfig.from_dict({"codec": "stc"})
    assert stc.error_feedback.enabled and stc.upload == {"id": "stc", "keep": 0.01} and stc.label == "stc"
    qsgd = ExperimentConfig.from_dict({"codec": "qsgd", "keep": 0.05})
    assert qsgd.upload == {"id": "qsgd", "levels": 16}  # keep meant nothing to QSGD
    lowrank = ExperimentConfig.from_dict({"codec": "lowrank"})
    assert lowrank.compressor() == get_compressor({"id": "lowrank", "rank": 1, "clusters": 3})


def test_a_flat_budget_drops_the_options_it_ignored():
    cfg = ExperimentConfig.from_dict({"codec": "fedzip-dap", "keep": 0.1, "budget_ratio": 1100.0})
    assert cfg.compressor() == FedZip(budget_ratio=1100.0)
    uniform = ExperimentConfig.from_dict({"budget_ratio": 600.0, "budget_split": "uniform", "clusters": 4})
    assert uniform.compressor() == FedZip(budget_ratio=600.0, budget_split="uniform", clusters=4)


def test_a_flat_download_inherits_the_uploads_keep_and_clusters():
    cfg = ExperimentConfig.from_dict(
        {"codec": "fedzip-dap+ef", "rank": 2, "clusters": 4, "downlink": "fedzip-dap", "downlink_rank": 5}
    )
    assert cfg.download_compressor() == FedZip(keep=0.01, clusters=4, encoding="dap", rank=5)
    assert cfg.compressor() == FedZip(keep=0.01, clusters=4, encoding="dap", rank=2)
    own = ExperimentConfig.from_dict(
        {"downlink": "fedzip-dap", "downlink_rank": 5, "downlink_clusters": 6, "downlink_iterations": 4}
    )
    assert own.download_compressor() == FedZip(keep=0.01, clusters=6, encoding="dap", rank=5, iterations=4)
    shared = ExperimentConfig.from_dict(
        {"downlink": "stc", "downlink_keep": 0.02, "downlink_shared_start": True}
    )
    assert shared.download == {"id": "stc", "keep": 0.02} and shared.server.shared_start


@pytest.mark.parametrize(
    "values",
    [{"codec": "zip"}, {"keep": 0}, {"colour": 1}, {"codec": "lowrank", "clusters": 1}, {"rounds": 0}],
)
def test_invalid_flat_configs(values):
    with pytest.raises(ValueError):
        ExperimentConfig.from_dict(values)


def test_a_run_stored_flat_is_reused_by_the_same_run_planned_today(tmp_path):
    import json

    flat = {"codec": "stc", "rounds": 5, "out": str(tmp_path)}
    summary = {"rounds": 5, "config": {**flat, "keep": 0.01, "error_feedback": True}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    cfg = ExperimentConfig.from_dict(flat)
    assert _cached(cfg) == summary
    assert _cached(cfg.replace(upload={"id": "stc", "keep": 0.02})) is None


def test_plans_in_either_shape_load(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text(
        '[experiment]\nmodel = "mlp"\ncodec = "fedzip-dap+ef"\nkeep = 0.05\n\n'
        '[[run]]\nname = "a"\n\n[[run]]\nname = "b"\ncodec = "topk+ef"\n'
    )
    runs = {run.name: run.config for run in load_plan(flat, tmp_path / "runs").runs}
    # a flat plan's run has no error feedback unless it asks for it (fedzip 0.1's rule)
    assert runs["a"].compressor() == FedZip(keep=0.05, clusters=3) and not runs["a"].error_feedback.enabled
    assert runs["b"].upload == {"id": "topk", "keep": 0.05} and runs["b"].error_feedback.enabled
    nested = tmp_path / "nested.toml"
    nested.write_text(
        '[experiment]\nmodel = "mlp"\n[experiment.upload]\nid = "fedzip"\nkeep = 0.05\n'
        "[experiment.training]\nlr = 0.1\n\n"
        '[[run]]\nname = "a"\ntraining = {batch_size = 10}\n\n'
        '[[run]]\nname = "b"\nupload = {id = "stc"}\nerror_feedback = {enabled = true}\n'
    )
    runs = {run.name: run.config for run in load_plan(nested, tmp_path / "runs").runs}
    assert (runs["a"].training.lr, runs["a"].training.batch_size) == (0.1, 10)  # merged with the plan's
    assert runs["b"].upload == {"id": "stc"}  # a codec table replaces the plan's whole
    with pytest.raises(ValueError, match="run 'b'"):
        nested.write_text(nested.read_text().replace("enabled = true", "enabled = false"))
        load_plan(nested, tmp_path / "runs")


# --- the command line ----------------------------------------------------------------------


def parse(*argv):
    return build_parser().parse_args(["run", *argv])


def test_every_setting_has_a_flag_with_its_help():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in (
        "--lr ",
        "--local-momentum",
        "--server-lr",
        "--clients",
        "--warmup-rounds",
        "--ef-momentum",
        "--error-feedback",
        "--downlink-shared-start",
        "--validation",
        "--keep",
        "--downlink-rank",
    ):
        assert flag in text
    assert "local SGD" in text  # the help text of the field that --local-momentum sets


def test_options_go_to_their_section_and_codec_options_to_the_codec():
    cfg = experiment_config(parse("--lr", "0.1", "--rounds", "4", "--keep", "0.02", "--codec", "stc"), "stc")
    assert cfg.training.lr == 0.1 and cfg.server.rounds == 4
    assert cfg.upload == {"id": "stc", "keep": 0.02} and cfg.error_feedback.enabled
    with pytest.raises(ValueError, match="unknown option"):  # QSGD's levels mean nothing to FedZip
        experiment_config(parse("--codec", "fedzip-dap", "--levels", "4"), "fedzip-dap")
    with pytest.raises(ValueError, match="keep"):  # the codec checks its own range
        experiment_config(parse("--keep", "2"))
    down = experiment_config(parse("--downlink", "fedzip-dap", "--downlink-rank", "5"))
    assert down.download_compressor() == FedZip(rank=5)


def test_options_override_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(ExperimentConfig(upload={"id": "fedzip", "keep": 0.05}, server={"rounds": 9}).to_toml())
    cfg = experiment_config(parse("--config", str(path), "--clusters", "4", "--no-error-feedback"))
    assert cfg.server.rounds == 9 and cfg.compressor() == FedZip(keep=0.05, clusters=4)


def test_a_flower_run_config_takes_the_same_options():
    from fedzip.fl.options import from_run_config

    cfg = from_run_config(
        {"rounds": 3, "codec": "fedzip-dap", "keep": 0.05, "error-feedback": True, "downlink": "", "lr": 0.1}
    )
    assert cfg.server.rounds == 3 and cfg.training.lr == 0.1 and cfg.error_feedback.enabled
    assert cfg.compressor() == FedZip(keep=0.05) and cfg.download is None  # "": not given
    shared = from_run_config({"downlink": "stc", "downlink-keep": 0.02, "downlink-shared-start": True})
    assert shared.download == {"id": "stc", "keep": 0.02} and shared.server.shared_start
    with pytest.raises(ValueError, match="unknown key"):
        from_run_config({"colour": 1})
