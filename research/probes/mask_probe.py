"""A shared mask at a byte budget, probed in process (no Flower).

    python research/probes/mask_probe.py [--rounds 20] [--ratio 1100] [--mask 0.01] [--out results/mask-probe.csv]

Time-correlated sparsification (Ozfatura et al., ISIT 2021): the server
sends every client the positions of the largest entries of the last global
update; a client sends its values there without positions (k-means labels,
Huffman-coded: ~1.7 bits an entry instead of ~12 with a position), and
spends what is left of its byte budget on its own largest entries elsewhere
(FedZip, uniform split). Error feedback on both parts. The setting is
feedback_probe.py's (converge-iid, seed 0, validation accuracy); ``uniform``
is the plain FedZip + error feedback run at the same budget. Every byte
counted is ``len()`` of a payload that was decoded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from probe_setting import CLIENTS, Rows, Setting

from fedzip import FedZip
from fedzip.sparsify import keep_count, top_entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=1100.0)
    parser.add_argument("--mask", type=float, nargs="+", default=[0.01], help="mask fractions to run")
    parser.add_argument("--every", type=int, default=5, help="evaluate every this many rounds (and round 1)")
    parser.add_argument("--plain", action="store_true", help="also run plain FedZip + error feedback")
    parser.add_argument("--out", default="results/mask-probe.csv")
    args = parser.parse_args()
    setting = Setting()
    start, update, accuracy = setting.start, setting.update, setting.accuracy
    budget = int(sum(v.nbytes for v in start.values()) / args.ratio)

    labels_codec = FedZip(keep=1.0, clusters=3, encoding="huffman", sparsify_1d=True)
    rows = Rows(args.out, ["variant", "round", "val_accuracy", "mean_payload_bytes", "seconds"], args.every)
    variants = ([("uniform", 0.0)] if args.plain else []) + [(f"mask-{m:g}", m) for m in args.mask]
    for variant, fraction in variants:
        began = time.perf_counter()
        residuals = [{k: np.zeros_like(v) for k, v in start.items()} for _ in range(CLIENTS)]
        served = dict(start)
        mask: dict[str, np.ndarray] = {}
        for server_round in range(1, args.rounds + 1):
            total = {k: np.zeros_like(v) for k, v in served.items()}
            sizes = []
            for client, residual in enumerate(residuals):
                for k, v in update(served, server_round, client).items():
                    residual[k] += v
                size = 0
                if mask:
                    gathered = {k: residual[k].reshape(-1)[idx] for k, idx in mask.items()}
                    payload = labels_codec.encode(gathered)
                    size += len(payload)
                    for k, v in labels_codec.decode(payload).items():
                        flat_r, flat_t = residual[k].reshape(-1), total[k].reshape(-1)
                        flat_r[mask[k]] -= v
                        flat_t[mask[k]] += v
                rest = dict(residual)
                for k, idx in mask.items():  # the rest of the budget goes to entries off the mask
                    rest[k] = residual[k].copy()
                    rest[k].reshape(-1)[idx] = 0
                extras = FedZip(budget_bytes=max(1, budget - size), budget_split="uniform")
                try:
                    payload = extras.encode(rest)
                except ValueError as exc:  # the mask's labels left too little for the rest
                    raise SystemExit(
                        f"{variant}: the mask alone takes {size} of {budget} bytes ({exc})"
                    ) from None
                size += len(payload)
                for k, v in extras.decode(payload).items():
                    residual[k] -= v
                    total[k] += v
                sizes.append(size)
            mean = {k: v / CLIENTS for k, v in total.items()}
            served = {k: v + mean[k] for k, v in served.items()}
            if fraction:
                mask = {
                    k: top_entries(np.abs(v).reshape(-1), keep_count(v.size, fraction))
                    for k, v in mean.items()
                    if v.ndim >= 2
                }
            if rows.due(server_round):
                seconds = round(time.perf_counter() - began)
                rows.add(
                    variant, server_round, round(accuracy(served), 4), round(float(np.mean(sizes))), seconds
                )
    print(f"rows: {rows.path}  (budget {budget} bytes an upload)")


if __name__ == "__main__":
    main()
