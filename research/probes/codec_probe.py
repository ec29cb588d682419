"""Any registered compressors with error feedback, probed in process (no Flower).

    python research/probes/codec_probe.py [--rounds 20] [--lr 0.05 ...] [--out results/codec-probe.csv] CONFIG...

Each CONFIG is a compressor config as JSON, e.g.
``'{"id": "lowrank", "rank": 1, "bits": 3}'`` or
``'{"id": "fedzip", "budget_ratio": 1100, "budget_split": "uniform", "sparsify_1d": false}'``.
The converge-iid setting of ``probe_setting.py`` (paper CNN, 10 IID clients,
seed 0), once per config and clients' SGD learning rate (``--lr``); every
client keeps its residual (Seide et al. 2014) and the server averages the
decoded uploads. Rows (validation accuracy, mean upload bytes,
compression against float32) go to a CSV as they come; a round takes ~12 s
per config on one core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
from probe_setting import Rows, Setting, error_feedback_rounds

from fedzip.compressors import get_compressor
from fedzip.fl import training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="compressor configs as JSON")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--every", type=int, default=5, help="evaluate every this many rounds (and round 1)")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05], help="clients' SGD learning rates")
    parser.add_argument("--lr-schedule", default="constant", choices=training.LR_SCHEDULES)
    parser.add_argument("--lr-final", type=float, default=0.0, help="cosine: the last round's learning rate")
    parser.add_argument("--out", default="results/codec-probe.csv")
    args = parser.parse_args()
    configs = [json.loads(text) for text in args.configs]
    codecs = [get_compressor(config) for config in configs]  # a bad config fails before any training
    setting = Setting()
    raw = sum(4 * v.size for v in setting.start.values())

    header = ["config", "lr", "schedule", "round", "val_accuracy", "upload_bytes", "ratio", "seconds"]
    rows = Rows(args.out, header, args.every)
    for (config, codec), lr in itertools.product(zip(args.configs, codecs, strict=True), args.lr):
        began = time.perf_counter()
        for server_round, weights, _, sizes in error_feedback_rounds(
            setting, codec, args.rounds, lr, args.lr_schedule, args.lr_final
        ):
            if rows.due(server_round):
                mean = float(np.mean(sizes))
                accuracy = round(setting.accuracy(weights), 4)
                seconds = round(time.perf_counter() - began)
                rows.add(
                    config,
                    lr,
                    args.lr_schedule,
                    server_round,
                    accuracy,
                    round(mean),
                    round(raw / mean, 1),
                    seconds,
                )
    print(f"rows: {rows.path}")


if __name__ == "__main__":
    main()
