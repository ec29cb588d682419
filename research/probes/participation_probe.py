"""What compressed uploads leave out of a round's average, by clients' share size (no Flower).

    python research/probes/participation_probe.py [--clients 100 1000] [--warm 30] [--codecs rank-2 budget-1000]

The cross-device setting (all 55,000 training images, Dirichlet(0.3), paper CNN, seed 0). The
model is first trained by FedAvg for ``--warm`` rounds of 10 clients (in process) so that
updates look like mid-run ones; then 10 sampled clients train one epoch each from it. Printed,
per number of clients and codec: the share of each client's update that its upload keeps
(1 - |u - C(u)|^2 / |u|^2, mean over clients) and the relative error of the round's average,
|mean(u) - mean(C(u))| / |mean(u)|: what the server's step misses. Codecs (``--codecs``):
``rank-2`` (FedZip(rank=2, clusters=3, iterations=4)), ``budget-N`` (FedZip(budget_ratio=N)),
``budget-N-keyed`` (the same, known_layout=True), ``rank-N``.

``--shared-ranks R ...``: linear uploads in a subspace the server chose. Every matrix (``shape[0]``
rows) is sent as ``M Q``, ``Q`` the top R right singular vectors of the server's previous step
(the FedAvg step of the last warm round), so that the server's average of the uploads is exactly
``mean(M) Q``: compression error no longer adds up client by client, only what lies outside the
subspace is missed. Printed: the share of each update inside it, what the round's average misses,
and what the best rank-R approximation of the average itself would miss (the subspace known in
advance, the floor); other tensors count as sent exactly. Floats an upload and a basis hold are
printed too (before any quantisation).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedzip import FedZip
from fedzip.bench import relative_error
from fedzip.fl import data as datamod
from fedzip.fl import models, training


def norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in update.values())))


def local_update(
    model: torch.nn.Module, weights: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """One epoch of local SGD (batch 10, lr 0.05) from ``weights``: trained - weights."""
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    training.train(model, training.to_tensor(images), torch.from_numpy(labels), 1, 10, "sgd", 0.05, seed)
    return {k: v.detach().numpy() - weights[k] for k, v in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--warm", type=int, default=30, help="FedAvg rounds before measuring")
    parser.add_argument("--codecs", nargs="+", default=["rank-2"], help="rank-N, budget-N, budget-N-keyed")
    parser.add_argument("--shared-ranks", type=int, nargs="*", default=[], help="subspace ranks to measure")
    parser.add_argument("--shared-masks", type=float, nargs="*", default=[], help="mask fractions to measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codecs = {name: codec_for(name) for name in args.codecs}
    split = datamod.split_for(None, 5000, 0, 0, 0)
    data = split.train_test
    for count in args.clients:
        began = time.perf_counter()
        shares = datamod.partition_indices(data.train_labels.tobytes(), "dirichlet:0.3", count, 0)
        model = training.fast_layout(models.build("cnn", data.classes, 0))
        weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        rng = np.random.default_rng(0)

        def update(client: int, seed: int, share=shares, net=model, start=weights) -> dict[str, np.ndarray]:
            return local_update(
                net, start, data.train_images[share[client]], data.train_labels[share[client]], seed
            )

        for server_round in range(args.warm):  # FedAvg, 10 clients a round, as the plans sample
            chosen = rng.choice(count, size=10, replace=False)
            updates = [update(int(c), server_round * 1009 + int(c)) for c in chosen]
            sizes = np.array([len(shares[int(c)]) for c in chosen], dtype=float)
            previous = {}  # the server's step: its subspace is what the next round's uploads use
            for k in weights:
                step = sum(s * u[k] for s, u in zip(sizes, updates, strict=True)) / sizes.sum()
                weights[k] = (weights[k] + step).astype(weights[k].dtype)
                previous[k] = step
        chosen = rng.choice(count, size=10, replace=False)
        updates = [update(int(c), 99_991 + int(c)) for c in chosen]
        floats = [{k: v for k, v in u.items() if v.dtype == np.float32} for u in updates]
        mean = {k: np.mean([u[k].astype(np.float64) for u in floats], axis=0) for k in floats[0]}
        images = np.mean([len(shares[int(c)]) for c in chosen])
        print(
            f"{count} clients ({images:.0f} images each on average): |mean update| / mean |update| = "
            f"{norm(mean) / np.mean([norm(u) for u in floats]):.2f} ({time.perf_counter() - began:.0f} s)"
        )
        for rank in args.shared_ranks:
            shared_subspace(rank, floats, mean, previous)
        for fraction in args.shared_masks:
            shared_mask(fraction, floats, mean, previous)
        for name, codec in codecs.items():
            approximations = [codec.approximate(u) for u in floats]
            ratio = np.mean([4 * sum(v.size for v in u.values()) / len(codec.encode(u)) for u in floats])
            print(f"  {name} ({ratio:.0f}x): {kept_and_missed(floats, mean, approximations)}")


def kept_and_missed(
    floats: list[dict[str, np.ndarray]],
    mean: dict[str, np.ndarray],
    approximations: list[dict[str, np.ndarray]],
) -> str:
    """What the uploads ``approximations`` keep of each client's update and miss of the average's norm."""
    kept = [1 - relative_error(u, a) for u, a in zip(floats, approximations, strict=True)]
    mean_approx = {k: np.mean([a[k].astype(np.float64) for a in approximations], axis=0) for k in mean}
    return (
        f"keeps {100 * np.mean(kept):.1f}% of a client's update (min {100 * np.min(kept):.1f}%); the average "
        f"of 10 misses {100 * np.sqrt(relative_error(mean, mean_approx)):.1f}% of its norm"
    )


def shared_subspace(
    rank: int,
    floats: list[dict[str, np.ndarray]],
    mean: dict[str, np.ndarray],
    previous: dict[str, np.ndarray],
) -> None:
    """Print what uploads ``M Q`` (``Q`` from the previous step's SVD) keep and miss (see the module)."""
    approximations, floor, upload, basis = [dict(u) for u in floats], dict(mean), 0, 0
    for key, average in mean.items():
        if average.ndim < 2:
            continue
        rows = average.shape[0]
        r = min(rank, rows, average.size // rows)
        right = np.linalg.svd(previous[key].reshape(rows, -1).astype(np.float64), full_matrices=False)[2][
            :r
        ].T
        for approximation in approximations:
            matrix = approximation[key].reshape(rows, -1).astype(np.float64)
            approximation[key] = ((matrix @ right) @ right.T).reshape(average.shape)
        u, s, vt = np.linalg.svd(average.reshape(rows, -1), full_matrices=False)
        floor[key] = ((u[:, :r] * s[:r]) @ vt[:r]).reshape(average.shape)
        upload, basis = upload + rows * r, basis + right.size
    print(
        f"  subspace of rank {rank} ({upload:,} floats an upload, {basis:,} in the basis): "
        f"{kept_and_missed(floats, mean, approximations)} (the average's own "
        f"rank-{rank}: {100 * np.sqrt(relative_error(mean, floor)):.1f}%)"
    )


def shared_mask(
    fraction: float,
    floats: list[dict[str, np.ndarray]],
    mean: dict[str, np.ndarray],
    previous: dict[str, np.ndarray],
) -> None:
    """Print what uploads of the entries at the previous step's largest positions keep and miss.

    The mask: ``fraction`` of all float entries, the largest magnitudes of the server's previous
    step across every tensor. A client's values there are sent as they are (k-means levels would
    add each client's rounding), so the server's average is exact on the mask. The floor: the same
    count of the average's own largest entries (its best Top-z, known in advance).
    """
    count = max(1, int(fraction * sum(v.size for v in mean.values())))
    masks = largest({k: previous[k] for k in mean}, count)
    approximations = [{k: np.where(masks[k], u[k], 0) for k in mean} for u in floats]
    own = largest(mean, count)
    floor = {k: np.where(own[k], v, 0) for k, v in mean.items()}
    print(
        f"  shared mask of {fraction:g} ({count:,} entries): {kept_and_missed(floats, mean, approximations)} "
        f"(the average's own largest {count:,}: {100 * np.sqrt(relative_error(mean, floor)):.1f}%)"
    )


def largest(arrays: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """Per tensor, where the ``count`` largest magnitudes of all of ``arrays`` together are."""
    threshold = np.partition(np.concatenate([np.abs(v).ravel() for v in arrays.values()]), -count)[-count]
    return {k: np.abs(v) >= threshold for k, v in arrays.items()}


def codec_for(name: str) -> FedZip:
    """``rank-N``, ``budget-N`` or ``budget-N-keyed`` as a FedZip codec."""
    form, _, rest = name.partition("-")
    keyed = rest.endswith("-keyed")
    value = rest.removesuffix("-keyed")
    if form == "rank" and not keyed:
        return FedZip(rank=int(value), clusters=3, iterations=4)
    if form == "budget":
        return FedZip(budget_ratio=float(value), known_layout=keyed)
    raise ValueError(f"codec {name!r}: use rank-N, budget-N or budget-N-keyed")


if __name__ == "__main__":
    main()
