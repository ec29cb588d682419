"""The budget's choice against hand-picked rank-2 factors at equal bytes, on real updates of every model.

    python research/probes/budget_probe.py [--models cnn resnet vit] [--warm 3] [--clients 3]

For each model (Fashion-MNIST, IID, seed 0): FedAvg trains ``--warm`` rounds of 10 clients of 1,200
images in process so that updates look like a run's, then ``--clients`` clients train one epoch
each (batch 10, SGD 0.05). For each client's float update: the bytes and relative squared error
(|u - C(u)|^2 / |u|^2) of ``FedZip(rank=2, clusters=3, iterations=4)``, and of
``FedZip(budget_bytes=<those bytes>)`` (Top-z or factors per tensor) and of a Top-z-only budget at
the same bytes; then the budget at 1000x and 300x where they fit, in named and in keyed payloads
(``known_layout=True``: no tensor names), with the forms it chose and the fastest of three encodes
(run it with ``OPENBLAS_NUM_THREADS=1``, as a Flower client has one core).
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


def local_update(model, weights, images, labels, seed):
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    training.train(model, training.to_tensor(images), torch.from_numpy(labels), 1, 10, "sgd", 0.05, seed)
    return {k: v.detach().numpy() - weights[k] for k, v in model.state_dict().items()}


def client_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The training subset's images and labels and the 10 IID clients' shares of it (seed 0)."""
    split = datamod.split_for(None, 5000, 12000, 0, 0)
    images, labels = split.train_test.train_images, split.train_test.train_labels
    return images, labels, np.array_split(np.random.default_rng(0).permutation(len(labels)), 10)


def warmed(name: str, warm: int, images, labels, shares) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """Model ``name`` (seed 0) and its weights after ``warm`` rounds of FedAvg over every client."""
    model = training.fast_layout(models.build(name, 10, 0))
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for round_ in range(warm):
        updates = [
            local_update(model, weights, images[s], labels[s], round_ * 10 + i) for i, s in enumerate(shares)
        ]
        weights = {
            k: np.asarray(weights[k] + np.mean([u[k] for u in updates], axis=0)).astype(weights[k].dtype)
            for k in weights
        }
    return model, weights


def measure(codec: FedZip, update: dict[str, np.ndarray]) -> tuple[int, float, str, float]:
    """Bytes, relative error, the forms chosen and the fastest of three encodes in seconds."""
    payload, sent = codec.encode_with_approximation(update)
    assert all(np.array_equal(v, sent[k]) for k, v in codec.decode(payload, layout=update).items())
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        codec.encode(update)
        seconds.append(time.perf_counter() - started)
    forms = ""
    if codec.budget_split == "error":
        chosen = [o.form for o in codec.plan(update).values()]
        forms = ", ".join(f"{chosen.count(f)} {f}" for f in dict.fromkeys(chosen))
    return len(payload), relative_error(update, sent), forms, min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet", "vit"])
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels, shares = client_data()
    for name in args.models:
        started = time.perf_counter()
        model, weights = warmed(name, args.warm, images, labels, shares)
        print(f"\n{name}: {models.parameter_count(model):,} parameters, warmed {args.warm} rounds")
        for client in range(args.clients):
            full = local_update(model, weights, images[shares[client]], labels[shares[client]], 1000 + client)
            update = {k: v for k, v in full.items() if v.dtype.kind == "f"}
            size = sum(v.nbytes for v in update.values())
            rank_bytes, rank_error, _, rank_seconds = measure(
                FedZip(rank=2, clusters=3, iterations=4), update
            )
            rows = [("rank-2 by hand", rank_bytes, rank_error, "", rank_seconds)]
            for label, codec in (
                ("budget, same bytes", FedZip(budget_bytes=rank_bytes)),
                ("Top-z budget, same bytes", FedZip(budget_bytes=rank_bytes, representations=["top-z"])),
                ("budget 1000x", FedZip(budget_ratio=1000)),
                ("budget 1000x, keyed", FedZip(budget_ratio=1000, known_layout=True)),
                ("budget 300x", FedZip(budget_ratio=300)),
                ("budget 300x, keyed", FedZip(budget_ratio=300, known_layout=True)),
            ):
                try:
                    rows.append((label, *measure(codec, update)))
                except ValueError as exc:
                    rows.append((label, 0, float("nan"), str(exc).split(":")[0], float("nan")))
            for label, nbytes, error, forms, seconds in rows:
                ratio = f"{size / nbytes:7.0f}x" if nbytes else "      -"
                print(
                    f"  client {client} {label:<26} {nbytes:>7} B {ratio}  error {error:.3f}  "
                    f"encode {seconds * 1000:5.0f} ms  {forms}"
                )
        print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
