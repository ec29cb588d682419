import gzip
import itertools
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr_datasets")

from research.render import options

from fedzip import FedZip, get_compressor
from fedzip.fl import data, models, training
from fedzip.fl.config import CODEC_NAMES, ExperimentConfig


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (600, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(600) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (100, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(100) % 10)
    return tmp_path


def test_reads_any_directory_of_idx_files(idx_dir):
    dataset = data.load(str(idx_dir))
    assert dataset.train_images.shape == (600, 28, 28) and dataset.test_labels.shape == (100,)
    assert dataset.classes == 10


def test_missing_data_names_the_install_command(tmp_path):
    with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.find_data_dir(str(tmp_path))


def test_malformed_idx_is_a_clear_error(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(data.DataError, match="does not match"):
        data.read_idx(tmp_path / "train-images-idx3-ubyte")


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "classes:2"])
def test_partitions_cover_the_data_without_overlap(spec):
    labels = np.repeat(np.arange(10), 100)
    parts = data.partition_indices(labels.tobytes(), spec, 5, 0)
    joined = np.concatenate(parts)
    assert len(parts) == 5 and np.unique(joined).size == joined.size
    if spec == "iid":
        assert sorted(map(len, parts)) == [200] * 5
    if spec == "classes:2":
        assert all(np.unique(labels[p]).size <= 2 for p in parts)
    again = data.partition_indices(labels.tobytes(), spec, 5, 0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_invalid_partition_spec():
    for spec in ["dirichlet:-1", "classes:0", "random", "iid:3"]:
        with pytest.raises(ValueError, match="invalid partition"):
            data.parse_partition(spec)


def test_paper_cnn_has_the_papers_parameter_count():
    assert models.parameter_count(models.build("cnn")) == 1_199_882
    with pytest.raises(ValueError):
        models.build("resnet")


def test_config_round_trips_through_toml(tmp_path):
    cfg = ExperimentConfig(codec="fedzip-dap+ef", clusters="auto", corrupt_clients=[1], rounds=3)
    assert cfg.codec == "fedzip-dap" and cfg.error_feedback
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert ExperimentConfig.from_toml(path) == cfg
    assert ExperimentConfig.from_toml(path, rounds=7).rounds == 7


@pytest.mark.parametrize(
    "values",
    [
        {"rounds": 0},
        {"model": "vgg"},
        {"codec": "zip"},
        {"codec": "stc+ec"},
        {"keep": 0},
        {"partition": "x"},
        {"colour": 1},
        {"levels": 0},
        {"codec": "lowrank", "clusters": 1},
        {"codec": "lowrank", "clusters": "auto"},
        {"codec": "fedzip-dap", "rank": 2, "budget_ratio": 1000.0},
        {"codec": "topk", "rank": 2},
        {"rank": -1},
        {"downlink": "stc", "downlink_rank": 4},
        {"downlink": "fedzip-dap", "downlink_rank": 4, "downlink_budget_ratio": 300.0},
        {"downlink_clusters": 5},  # no downlink to set them for
        {"downlink": "stc", "downlink_clusters": 5},  # STC has no clusters
        {"downlink": "fedzip-dap", "downlink_iterations": 4},  # iterations are the factors'
        {"downlink": "fedzip-dap", "downlink_rank": 4, "downlink_iterations": 101},
        {"downlink": "fedzip-dap", "downlink_rank": 4, "downlink_clusters": 1},
        {"downlink": "fedzip-dap", "downlink_clusters": 300},
        {"downlink": "fedzip-dap", "downlink_clusters": -1},
        {"codec": "fedzip-dap", "iterations": 4},  # no factors to iterate for
        {"codec": "lowrank", "iterations": 101},
        {"link": "5g"},
        {"lr_schedule": "step"},
        {"lr_schedule": "cosine", "lr": 0.05, "lr_final": 0.1},  # ends above where it starts
        {"lr_schedule": "cosine", "lr_final": -0.01},
        {"lr_final": 0.01},  # a constant lr has no end to set
    ],
)
def test_invalid_configs(values):
    with pytest.raises(ValueError):
        ExperimentConfig.from_dict(values)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_codec_name_builds_its_compressor(codec):
    rank = 2 if codec == "lowrank" else 0
    cfg = ExperimentConfig(codec=codec, keep=0.05, levels=4, rank=rank, clusters=5)
    compressor = get_compressor(cfg.compressor_config())
    assert compressor.codec_id == codec.split("-")[0]
    assert getattr(compressor, "keep", 0.05) == 0.05 and getattr(compressor, "levels", 4) == 4
    assert getattr(compressor, "rank", None) in ((2,) if codec == "lowrank" else (None,))
    assert getattr(compressor, "clusters", 5) == 5


def test_rank_factors_fedzip_uploads_and_not_its_downloads():
    cfg = ExperimentConfig(codec="fedzip-dap+ef", rank=2, clusters=3, downlink="fedzip-dap")
    assert get_compressor(cfg.compressor_config()) == FedZip(
        keep=cfg.keep, clusters=3, encoding="dap", rank=2
    )
    assert "rank" not in cfg.downlink_config()
    down = ExperimentConfig(codec="fedzip-dap+ef", rank=2, clusters=3, downlink="fedzip-dap", downlink_rank=8)
    assert down.downlink_config()["rank"] == 8 and down.compressor_config()["rank"] == 2
    assert get_compressor(ExperimentConfig(codec="lowrank").compressor_config()).rank == 1


def test_downloads_take_their_own_clusters_and_iterations():
    cfg = ExperimentConfig(
        codec="fedzip-dap+ef",
        rank=2,
        clusters=3,
        downlink="fedzip-dap",
        downlink_rank=5,
        downlink_clusters=5,
        downlink_iterations=4,
    )
    assert get_compressor(cfg.downlink_config()) == FedZip(
        keep=cfg.keep, clusters=5, encoding="dap", rank=5, iterations=4
    )
    assert get_compressor(cfg.compressor_config()) == FedZip(
        keep=cfg.keep, clusters=3, encoding="dap", rank=2
    )
    assert "k=5, 4 iterations" in options(cfg)
    uploads = ExperimentConfig(
        codec="fedzip-dap+ef", rank=2, iterations=4, downlink="fedzip-dap", downlink_rank=5
    )
    assert uploads.compressor_config()["iterations"] == 4 and "iterations" not in uploads.downlink_config()
    assert "rank-2 factors, k=3, 4 iterations" in options(uploads)
    assert get_compressor(ExperimentConfig(codec="lowrank", iterations=3).compressor_config()).iterations == 3
    # unset, a download uses the uploads' clusters and the factors' default iterations
    same = ExperimentConfig(codec="fedzip-dap+ef", clusters=4, downlink="stc")
    assert same.downlink_config() == {"id": "stc", "keep": same.keep}
    top_z = ExperimentConfig(codec="fedzip-dap+ef", clusters=4, downlink="fedzip-dap")
    assert top_z.downlink_config()["clusters"] == 4 and "iterations" not in top_z.downlink_config()
    lowrank = ExperimentConfig(codec="lowrank", rank=2, downlink="lowrank", downlink_clusters=6)
    assert get_compressor(lowrank.downlink_config()).clusters == 6


def test_stc_always_accumulates_its_residual():
    cfg = ExperimentConfig(codec="stc")
    assert cfg.error_feedback and cfg.label == "stc"
    assert ExperimentConfig(codec="signsgd+ef").label == "signsgd+ef"


def test_the_validation_set_is_held_out_of_training_and_seeded():
    from fedzip.fl.data import Dataset, split

    ids = np.arange(1000)
    images = np.zeros((1000, 2, 2), np.uint8)  # image i holds i in its first two bytes
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    labels = np.arange(1000, dtype=np.int64) % 10
    data = Dataset(images, labels, images[:50], labels[:50])
    first = split(data, 200, 300, 20, seed=7)
    again = split(data, 200, 300, 20, seed=7)
    other = split(data, 200, 300, 20, seed=8)
    assert first.val_labels.size == 200 and first.train_test.train_labels.size == 300
    assert first.train_test.test_labels.size == 20
    val_ids = {bytes(x) for x in first.val_images}
    train_ids = {bytes(x) for x in first.train_test.train_images}
    assert not val_ids & train_ids  # never trained on
    assert np.array_equal(again.val_images, first.val_images)
    assert not np.array_equal(other.val_images, first.val_images)
    everything = split(data, 200, 0, 0, seed=7)  # no limit: every example not held out
    assert everything.train_test.train_labels.size == 800
    with pytest.raises(ValueError, match="validation"):
        split(data, 1000, 0, 0, seed=0)


def test_cosine_lr_runs_from_lr_in_round_one_to_its_final_value_in_the_last():
    rounds = 81
    lrs = [training.round_lr(0.05, "cosine", 0.005, r, rounds) for r in range(1, rounds + 1)]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.005)
    assert lrs[40] == pytest.approx((0.05 + 0.005) / 2)  # half way
    assert lrs[20] == pytest.approx(0.005 + 0.045 * (1 + math.cos(math.pi / 4)) / 2)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert training.round_lr(0.05, "constant", 0.0, 40, rounds) == 0.05
    assert training.round_lr(0.05, "cosine", 0.0, 1, 1) == 0.05  # a one-round run
    with pytest.raises(ValueError, match="constant, cosine"):
        training.round_lr(0.05, "linear", 0.0, 1, 10)


def test_the_schedule_is_in_the_clients_settings_and_the_run_label():
    from fedzip.fl.apps import client_settings

    cfg = ExperimentConfig(rounds=80, lr_schedule="cosine", lr_final=0.005)
    settings = client_settings(cfg)
    assert (settings["lr-schedule"], settings["lr-final"], settings["rounds"]) == ("cosine", 0.005, 80)
    base = ExperimentConfig()
    assert options(cfg, base).endswith(", cosine lr 0.05 to 0.005")
    assert options(ExperimentConfig(lr=0.1), base).endswith(", lr 0.1")
    assert options(ExperimentConfig(optimizer="adam", batch_size=10), base).endswith(", adam, batch 10")
    assert options(base, base) == options(base) == "fedzip-dap, keep 0.01, k=3"  # trained as the plan
