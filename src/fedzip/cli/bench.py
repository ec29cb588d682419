"""``fedzip bench``: codec size, speed and memory next to zstd, and a federated round's phases."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from ..bench import FEEDBACK_REPRESENTATIONS, REPRESENTATION_ROWS
from ..codec import FedZip
from ..encodings import CHOICES
from ..fl.options import clusters
from ..records import ENCODINGS
from .common import CliError, positive_int

BASELINES = ("fp16", "topk", "qsgd", "signsgd", "stc", "lowrank")

FL_UPLOAD = {"id": "fedzip", "keep": 0.01}

# Columns aligned left; the others hold numbers.
LABELS = {"update", "codec", "method", "model"}


def add_command(commands: Any) -> None:
    """The ``bench`` command and its options."""
    bench = commands.add_parser("bench", help="codec size, speed and memory next to zstd")
    bench.add_argument(
        "--params", type=positive_int, default=25_000_000, help="size of the large update (0: skip it)"
    )
    bench.add_argument("--keep", type=float, default=0.01, help="fraction of entries kept (default 0.01)")
    bench.add_argument("--clusters", type=clusters, default=3, help="1..256 or auto (default 3)")
    bench.add_argument("--encodings", default=",".join(CHOICES), help="comma-separated encodings")
    bench.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baseline compressors to measure too (default {','.join(BASELINES)}; '' for none)",
    )
    bench.add_argument(
        "--representations",
        help="comma-separated rows of the budget's representations and the budget itself "
        f"(default {','.join(REPRESENTATION_ROWS)}; with --feedback {','.join(FEEDBACK_REPRESENTATIONS)}; "
        "'' for none)",
    )
    bench.add_argument("--repeat", type=positive_int, default=3, help="timing runs, best kept (default 3)")
    bench.add_argument("--seed", type=positive_int, default=0)
    bench.add_argument(
        "--fl",
        action="store_true",
        help="time a simulated round (paper CNN and MLP) next to the clients' bare local training",
    )
    bench.add_argument(
        "--fl-config",
        help="plan or TOML file whose [experiment] sets the data and clients for --fl "
        "(default: fedzip run's defaults)",
    )
    bench.add_argument(
        "--fl-models", default="cnn,mlp", help="comma-separated models for --fl (default cnn,mlp)"
    )
    bench.add_argument(
        "--fl-rounds", type=positive_int, default=6, help="simulated rounds for --fl (default 6)"
    )
    bench.add_argument(
        "--feedback",
        action="store_true",
        help="time and peak memory of error feedback on a --params update (e.g. --params 500e6)",
    )
    bench.add_argument(
        "--out", help="directory for bench.json, bench.csv and bench.md (feedback.* with --feedback)"
    )
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> None:
    from rich.console import Console

    from .. import bench

    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    unknown = sorted(set(encodings) - set(ENCODINGS))
    if unknown:
        raise CliError(f"unknown encoding(s) {', '.join(unknown)}; choose from {', '.join(ENCODINGS)}")
    FedZip(keep=args.keep, clusters=args.clusters)  # the codec checks its options before any work
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise CliError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if args.representations is None:
        args.representations = ",".join(FEEDBACK_REPRESENTATIONS if args.feedback else REPRESENTATION_ROWS)
    representations = [r.strip() for r in args.representations.split(",") if r.strip()]
    unknown = sorted(set(representations) - set(REPRESENTATION_ROWS))
    if unknown:
        raise CliError(
            f"unknown representation row(s) {', '.join(unknown)}; choose from {', '.join(REPRESENTATION_ROWS)}"
        )
    console = Console(stderr=True)
    if args.fl:
        _bench_fl(args, console)
        return
    if args.feedback:
        with console.status("benchmarking") as status:
            feedback_rows = bench.bench_feedback(
                parameters=int(args.params),
                keep=args.keep,
                seed=args.seed,
                progress=lambda message: status.update(f"benchmarking {message}"),
                representations=representations,
            )
        headers = ["method", "parameters", "bytes", "seconds", "peak extra", "held in memory"]
        cells = [
            [
                r.method,
                f"{r.parameters:,}",
                f"{r.payload_bytes:,}",
                f"{r.seconds:.2f}",
                f"{r.peak_extra_x_update:.2f}x",
                f"{r.held_x_update:.2f}x",
            ]
            for r in feedback_rows
        ]
        title = f"fedzip bench --feedback: keep={args.keep}, memory relative to the update's size"
        _emit_table(
            console, title, headers, cells, [r.to_dict() for r in feedback_rows], args.out, "feedback"
        )
        return
    with console.status("benchmarking") as status:
        rows = bench.run(
            parameters=args.params,
            keep=args.keep,
            clusters=args.clusters,
            encodings=encodings,
            repeat=args.repeat,
            seed=args.seed,
            progress=lambda message: status.update(f"benchmarking {message}"),
            baselines=baselines,
            representations=representations,
        )
    title = f"fedzip bench: keep={args.keep}, clusters={args.clusters}, best of {args.repeat}"
    headers = [
        "update",
        "codec",
        "bytes",
        "ratio",
        "bits/kept",
        "x bound",
        "enc MB/s",
        "dec MB/s",
        "peak mem",
    ]
    cells = [
        [
            row.update,
            row.codec,
            f"{row.payload_bytes:,}",
            f"{row.ratio:.1f}x",
            "" if row.bits_per_kept is None else f"{row.bits_per_kept:.2f}",
            "" if row.vs_entropy_bound is None else f"{row.vs_entropy_bound:.3f}",
            f"{row.encode_mb_s:.0f}",
            f"{row.decode_mb_s:.0f}",
            "" if row.peak_memory_x_input is None else f"{row.peak_memory_x_input:.2f}x",
        ]
        for row in rows
    ]
    _emit_table(console, title, headers, cells, [row.to_dict() for row in rows], args.out, "bench")


def _bench_fl(args: argparse.Namespace, console: Any) -> None:
    from ..fl import speed
    from ..fl.config import ExperimentConfig

    # fedzip-dap with error feedback, at the config's keep (1% without a config file)
    base = (
        ExperimentConfig.from_toml(args.fl_config) if args.fl_config else ExperimentConfig(upload=FL_UPLOAD)
    )
    rows = []
    for model in args.fl_models.split(","):
        cfg = base.replace(model=model).with_codec("fedzip-dap+ef")
        console.print(
            f"measuring {model}: local training back to back, then {args.fl_rounds} simulated rounds"
        )
        rows.append(speed.measure(cfg, rounds=args.fl_rounds))
    headers = [
        "model",
        "reference s",
        "1 thread s",
        "2 threads s",
        "round s",
        "x reference",
        "rounds/min",
        "without eval s",
        "x reference ",
        "train phase s",
        "aggregate s",
        "eval s",
        "client s",
        "Flower polling s",
        "x reference  ",
        "train phase, 1 batch per client s",
        "same, FedAvg s",
        "headroom at 1.25x s",
    ]
    cells = []
    for r in rows:
        d = r.to_dict()
        cells.append(
            [
                r.model,
                f"{r.reference:.2f}",
                f"{r.reference_1_thread:.2f}",
                f"{r.reference_2_threads:.2f}",
                f"{r.round_seconds:.2f}",
                f"{d['ratio']:.2f}x",
                f"{d['rounds_per_minute']:.1f}",
                f"{r.round_without_eval:.2f}",
                f"{d['ratio_without_eval']:.2f}x",
                f"{r.train_phase:.2f}",
                f"{r.aggregate:.2f}",
                f"{r.evaluation:.2f}",
                f"{r.client_training:.2f}",
                f"{r.round_flower_polling:.2f}",
                f"{r.round_flower_polling / r.reference:.2f}x",
                f"{r.messaging_floor:.2f}",
                f"{r.messaging_floor_plain:.2f}",
                f"{d['headroom_at_1_25x']:.2f}",
            ]
        )
    title = (
        f"fedzip bench --fl: a simulated round next to the same {rows[0].clients} clients' training back to "
        f"back ({rows[0].train_images:,} training images)"
    )
    _emit_table(console, title, headers, cells, [r.to_dict() for r in rows], args.out, "fl")


def _emit_table(
    console: Any,
    title: str,
    headers: list[str],
    cells: list[list[str]],
    data: list[dict],
    out: Any,
    stem: str,
) -> None:
    """Print a table and, with ``out``, write it as STEM.json, STEM.csv and STEM.md."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in LABELS else "right")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in cells:
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    stdout = Console()
    if not stdout.is_terminal:
        stdout = Console(width=140)
    stdout.print(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
        with open(out / f"{stem}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        console.print(f"results written to {out}/{stem}.json, {stem}.csv, {stem}.md")
