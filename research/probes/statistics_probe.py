"""What a BatchNorm model's update is made of, and what a budget sends of each part.

    python research/probes/statistics_probe.py [--model resnet] [--warm 2] [--ratios 1000 300 100]

The budget probe's setting (Fashion-MNIST, 10 IID clients of 1,200 images, FedAvg warmed ``--warm``
rounds in process, then client 0's epoch; batch 10, SGD 0.05). Prints the share of the float
update's squared norm and of its entries held by the BatchNorm running statistics, and for
``FedZip(budget_ratio=R, known_layout=True)`` at each ratio the payload's bytes and the share of
the weights' and of the statistics' squared error it leaves (run with ``OPENBLAS_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from budget_probe import client_data, local_update, warmed

from fedzip import FedZip, exact


def squares(arrays: dict[str, np.ndarray]) -> float:
    return sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1000.0, 300.0, 100.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels, shares = client_data()
    model, weights = warmed(args.model, args.warm, images, labels, shares)
    full = local_update(model, weights, images[shares[0]], labels[shares[0]], 1000)
    update = exact.floats(full)
    statistic = {k for k in update if k.endswith(("running_mean", "running_var"))}
    parts = {
        "statistics": {k: v for k, v in update.items() if k in statistic},
        "weights": {k: v for k, v in update.items() if k not in statistic},
    }
    entries = sum(v.size for v in update.values())
    for part, arrays in parts.items():
        print(
            f"{part}: {squares(arrays) / squares(update):.1%} of the squared norm, "
            f"{sum(v.size for v in arrays.values()) / entries:.1%} of the entries"
        )
    for ratio in args.ratios:
        payload, sent = FedZip(budget_ratio=ratio, known_layout=True).encode_with_approximation(update)
        left = {
            part: squares({k: v - sent[k] for k, v in arrays.items()}) / squares(arrays)
            for part, arrays in parts.items()
        }
        print(
            f"{ratio:g}x: {len(payload):,} bytes; left: weights {left['weights']:.3f}, statistics {left['statistics']:.3f}"
        )


if __name__ == "__main__":
    main()
