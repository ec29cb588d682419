"""MNIST-format data from local IDX files, partitioned with flwr-datasets."""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIRS = (
    "/usr/share/datasets/fashion-mnist",
    "~/.cache/fedzip/debian/usr/share/datasets/fashion-mnist",
)
INSTALL_HINT = (
    "install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (or `make data`), "
    "or pass --data-dir with MNIST-format IDX files"
)


class DataError(ValueError):
    """The data set is missing or malformed."""


@dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # (n, 28, 28) uint8
    train_labels: np.ndarray  # (n,) int64
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def classes(self) -> int:
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory to read: ``data_dir``, $FEDZIP_DATA_DIR, or Debian's Fashion-MNIST."""
    candidates = [data_dir] if data_dir else [os.environ.get("FEDZIP_DATA_DIR"), *DEFAULT_DIRS]
    for candidate in candidates:
        if candidate and _find(Path(candidate).expanduser(), "train", "images", required=False):
            return Path(candidate).expanduser()
    where = data_dir or " or ".join(DEFAULT_DIRS)
    raise DataError(f"no MNIST-format IDX files found in {where}: {INSTALL_HINT}")


def _find(directory: Path, split: str, kind: str, required: bool = True) -> Path | None:
    names = {"train": ("train",), "test": ("t10k", "test")}[split]
    suffix = "idx3-ubyte" if kind == "images" else "idx1-ubyte"
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if any(f"{n}-{kind}-{suffix}" in path.name for n in names):
                return path
    if required:
        raise DataError(f"{directory} has no {split} {kind} file (*{names[0]}-{kind}-{suffix}[.gz])")
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path}: size does not match its header {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def load(data_dir: str | None = None) -> Dataset:
    """Load train and test splits from a directory of IDX files."""
    directory = find_data_dir(data_dir)
    arrays = {
        (split, kind): read_idx(_find(directory, split, kind))
        for split in ("train", "test")
        for kind in ("images", "labels")
    }
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} disagree")
    return Dataset(
        arrays[("train", "images")],
        arrays[("train", "labels")].astype(np.int64),
        arrays[("test", "images")],
        arrays[("test", "labels")].astype(np.int64),
    )


def parse_partition(spec: str) -> tuple[str, float | int | None]:
    """``iid``, ``dirichlet:<alpha>`` or ``classes:<k>`` -> (kind, parameter)."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "iid" and not arg:
            return "iid", None
        if kind == "dirichlet":
            alpha = float(arg)
            if alpha > 0:
                return kind, alpha
        if kind == "classes":
            k = int(arg)
            if k >= 1:
                return kind, k
    except ValueError:
        pass
    raise ValueError(f"invalid partition {spec!r}: use iid, dirichlet:<alpha > 0> or classes:<k >= 1>")


@functools.lru_cache(maxsize=8)
def partition_indices(labels_key: bytes, spec: str, partitions: int, seed: int) -> tuple[np.ndarray, ...]:
    """Train indices of every partition, from flwr-datasets partitioners (cached)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    labels = np.frombuffer(labels_key, dtype=np.int64)
    kind, arg = parse_partition(spec)
    if kind == "iid":
        partitioner = IidPartitioner(num_partitions=partitions)
    elif kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=partitions, partition_by="label", alpha=arg, min_partition_size=1, seed=seed
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=partitions, partition_by="label", num_classes_per_partition=arg, seed=seed
        )
    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict({"label": labels, "index": np.arange(labels.size)})
    if kind == "iid":
        table = table.shuffle(seed=seed)
    partitioner.dataset = table
    return tuple(
        np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(partitions)
    )


def subset(data: Dataset, train_limit: int | None, test_limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of each split (for quick runs)."""
    return split(data, 0, train_limit, test_limit, seed).train_test


@dataclass(frozen=True)
class Split:
    """Training, validation and test examples of one run."""

    train_test: Dataset  # the training examples clients hold, and the test split
    val_images: np.ndarray
    val_labels: np.ndarray

    @property
    def classes(self) -> int:
        return self.train_test.classes


@functools.lru_cache(maxsize=8)
def _split_cached(
    data_dir: str | None, validation: int, train_limit: int, test_limit: int, seed: int
) -> Split:
    return split(load(data_dir), validation, train_limit, test_limit, seed)


def split_for(data_dir: str | None, validation: int, train_limit: int, test_limit: int, seed: int) -> Split:
    """:func:`split` of the data in ``data_dir``, computed once per process."""
    return _split_cached(data_dir or None, validation, train_limit or 0, test_limit or 0, seed)


def split(
    data: Dataset, validation: int, train_limit: int | None, test_limit: int | None, seed: int
) -> Split:
    """Hold out ``validation`` training examples, then subsample what is left.

    The validation examples are drawn first (seeded), so they never reach a
    client whatever ``train_limit`` is; ``train_limit`` (0 or None: all)
    examples of the rest are the clients', ``test_limit`` (0 or None: all) of
    the test split are evaluated. Choices are made on validation accuracy;
    the test split is only reported.
    """
    total = data.train_labels.size
    if not 0 <= validation < total:
        raise ValueError(f"validation must be from 0 to {total - 1} examples, got {validation}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(total) if validation else np.arange(total)
    held, rest = np.sort(order[:validation]), np.sort(order[validation:])
    if train_limit and train_limit < rest.size:
        rest = np.sort(rng.choice(rest, train_limit, replace=False))
    test = np.arange(data.test_labels.size)
    if test_limit and test_limit < test.size:
        test = np.sort(rng.choice(test.size, test_limit, replace=False))
    return Split(
        Dataset(
            data.train_images[rest], data.train_labels[rest], data.test_images[test], data.test_labels[test]
        ),
        data.train_images[held],
        data.train_labels[held],
    )
