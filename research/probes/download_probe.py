"""What a compressed download (or upload) leaves out, per setting, on the same update.

    python research/probes/download_probe.py [--rounds 10] [--at 5 10] [--what download|upload]
                                        [--out results/download-probe.csv] CONFIG...

The converge-iid setting of ``probe_setting.py`` in process: clients upload
rank-2 factors with error feedback (``--upload``) and train from the copy the
downloads build; the server compresses ``global - copy`` (its update plus
what earlier downloads left out) with ``--down`` each round, as
:class:`fedzip.flower.downlink.Broadcaster` does. At the rounds of ``--at``
every CONFIG (a compressor config as JSON, e.g.
``'{"id": "fedzip", "rank": 5, "clusters": 5, "iterations": 4}'``) is applied
to that round's download: its bytes, its compression against float32 and the
share of the download's squared norm it leaves out (what waits in the server's
residual for later rounds). ``--what upload``: the same for client 0's upload
of that round, its update plus its residual.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from probe_setting import CLIENTS, Rows, Setting

from fedzip.bench import relative_error
from fedzip.compressors import get_compressor
from fedzip.feedback import ErrorFeedback

RANK_2 = '{"id": "fedzip", "rank": 2, "clusters": 3, "sparsify_1d": false}'
RANK_6 = '{"id": "fedzip", "rank": 6, "clusters": 3, "sparsify_1d": false}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "configs", nargs="+", help="compressor configs (JSON) to apply to the measured update"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--at", type=int, nargs="+", default=[5, 10], help="rounds whose download is measured"
    )
    parser.add_argument("--upload", default=RANK_2, help="the clients' compressor (with error feedback)")
    parser.add_argument("--down", default=RANK_6, help="the downlink compressor the run advances with")
    parser.add_argument("--what", choices=("download", "upload"), default="download")
    parser.add_argument("--out", default="results/download-probe.csv")
    args = parser.parse_args()
    candidates = [get_compressor(json.loads(text)) for text in args.configs]  # bad configs fail first
    upload, down = get_compressor(json.loads(args.upload)), get_compressor(json.loads(args.down))
    setting = Setting()
    raw = sum(4 * v.size for v in setting.start.values())
    rows = Rows(args.out, ["config", "round", "bytes", "ratio", "missed"], 1)

    senders = [ErrorFeedback(upload) for _ in range(CLIENTS)]
    exact, copy = dict(setting.start), dict(setting.start)  # the server's model, the clients'
    for server_round in range(1, args.rounds + 1):
        total = {k: np.zeros_like(v) for k, v in exact.items()}
        measured = None
        for client, sender in enumerate(senders):
            update = setting.update(copy, server_round, client)
            if client == 0 and args.what == "upload":
                measured = {k: v + sender.residual[k] if sender.residual else v for k, v in update.items()}
            for k, v in upload.decode(sender.encode(update)).items():
                total[k] += v
        exact = {k: v + total[k] / CLIENTS for k, v in exact.items()}
        download = {k: exact[k] - copy[k] for k in exact}
        if server_round in args.at:
            target = download if measured is None else measured
            for text, codec in zip(args.configs, candidates, strict=True):
                payload, sent = codec.encode_with_approximation(target)
                share = round(relative_error(target, sent), 3)
                rows.add(text, server_round, len(payload), round(raw / len(payload), 1), share)
        brought = down.approximate(download)
        copy = {k: v + brought[k] for k, v in copy.items()}
    print(f"rows: {rows.path}")


if __name__ == "__main__":
    main()
