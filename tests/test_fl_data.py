import gzip
import itertools
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr_datasets")

from research.render import options

from fedzip.fl import data, models, training
from fedzip.fl.config import ExperimentConfig


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
        models.build("resnet50")


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

    cfg = ExperimentConfig(
        server={"rounds": 80},
        training={"lr_schedule": "cosine", "lr_final": 0.005},
        upload={"id": "fedzip", "keep": 0.01},
    )
    settings = client_settings(cfg)
    assert (settings["lr-schedule"], settings["lr-final"], settings["rounds"]) == ("cosine", 0.005, 80)
    base = cfg.replace(training={"lr_schedule": "constant", "lr_final": 0.0})
    assert options(cfg, base).endswith(", cosine lr 0.05 to 0.005")
    assert options(base.replace(training={"lr": 0.1}), base).endswith(", lr 0.1")
    assert options(base.replace(training={"optimizer": "adam", "batch_size": 10}), base).endswith(
        ", adam, batch 10"
    )
    assert options(base, base) == options(base) == "fedzip-dap, keep 0.01, k=3"  # trained as the plan
