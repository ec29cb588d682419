"""Error feedback at a byte budget, probed in process (no Flower): three ways to use the residual.

    python research/probes/feedback_probe.py [--rounds 20] [--ratio 1100] [--out results/feedback-probe.csv]

The converge-iid setting (paper CNN, 10 IID clients of 1,200 images, batch 10,
SGD lr 0.05, seed 0, 5,000 validation images), every upload a FedZip payload
at 1/ratio of the float32 update (uniform split, k=3). Validation accuracy of:

- ``served``: classic error feedback (Seide et al. 2014), the model the
  server holds and clients train from;
- ``virtual``: the same run's *virtual iterate*, the served model plus the
  clients' mean residual: what a final flush of every residual would give;
- ``ef21``: EF21 (Richtarik et al., NeurIPS 2021): each client sends the
  compressed difference between its update and its running estimate, and the
  server steps by the mean estimate every round.

Rows go to a CSV as they come; one round takes ~12 s per variant on one core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from probe_setting import CLIENTS, Rows, Setting, error_feedback_rounds

from fedzip import FedZip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=1100.0)
    parser.add_argument("--every", type=int, default=5, help="evaluate every this many rounds (and round 1)")
    parser.add_argument("--out", default="results/feedback-probe.csv")
    args = parser.parse_args()
    setting = Setting()
    start, accuracy, update = setting.start, setting.accuracy, setting.update

    rows = Rows(args.out, ["variant", "round", "val_accuracy", "seconds"], args.every)

    def report(variant: str, server_round: int, weights: dict[str, np.ndarray], began: float) -> None:
        rows.add(variant, server_round, round(accuracy(weights), 4), round(time.perf_counter() - began))

    began = time.perf_counter()
    codec = FedZip(budget_ratio=args.ratio, budget_split="uniform")
    for server_round, served, senders, _ in error_feedback_rounds(setting, codec, args.rounds):
        if rows.due(server_round):
            report("served", server_round, served, began)
            virtual = {k: v + sum(s.residual[k] for s in senders) / CLIENTS for k, v in served.items()}
            report("virtual", server_round, virtual, began)

    began = time.perf_counter()
    estimates = [{k: np.zeros_like(v) for k, v in start.items()} for _ in range(CLIENTS)]
    step = {k: np.zeros_like(v) for k, v in start.items()}
    weights = dict(start)
    for server_round in range(1, args.rounds + 1):
        total = {k: np.zeros_like(v) for k, v in start.items()}
        for client, estimate in enumerate(estimates):
            new = update(weights, server_round, client)
            sent = codec.decode(codec.encode({k: v - estimate[k] for k, v in new.items()}))
            for k, v in sent.items():
                estimate[k] += v
                total[k] += v
        step = {k: v + total[k] / CLIENTS for k, v in step.items()}
        weights = {k: v + step[k] for k, v in weights.items()}
        if rows.due(server_round):
            report("ef21", server_round, weights, began)
    print(f"rows: {rows.path}")


if __name__ == "__main__":
    main()
