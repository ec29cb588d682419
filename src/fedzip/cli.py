"""The ``fedzip`` command."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _keep(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"keep must be in (0, 1], got {text}")
    return value


def _clusters(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1..256 or 'auto', got {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"clusters must be 1..256 or 'auto', got {text}")
    return value


def _bench(args: argparse.Namespace) -> None:
    from rich.console import Console

    from . import bench

    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    unknown = sorted(set(encodings) - {"huffman", "position", "dap", "auto"})
    if unknown:
        raise CliError(f"unknown encoding(s) {', '.join(unknown)}; choose from huffman, position, dap, auto")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise CliError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
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
    from .fl import speed
    from .fl.config import ExperimentConfig

    base = ExperimentConfig.from_toml(args.fl_config) if args.fl_config else ExperimentConfig()
    rows = []
    for model in ("cnn", "mlp"):
        cfg = base.replace(model=model, codec="fedzip-dap", error_feedback=True)
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


# Columns aligned left; the others hold numbers.
LABELS = {"update", "codec", "method", "model"}


def _inspect(args: argparse.Namespace) -> None:
    from .payload import inspect

    path = Path(args.payload)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    report = inspect(path.read_bytes())
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)


BASELINES = ("fp16", "topk", "qsgd", "signsgd", "stc", "lowrank")

_EXPERIMENT_OPTIONS = (
    ("--data-dir", str, "directory of MNIST-format IDX files (default: Debian's Fashion-MNIST)"),
    ("--partition", str, "iid, dirichlet:<alpha> or classes:<k> (default iid)"),
    ("--model", str, "cnn (the paper's, 1.2M parameters) or mlp (default)"),
    ("--clients", int, "number of clients / SuperNodes (default 10)"),
    ("--fraction", float, "fraction of clients trained per round (default 1.0)"),
    ("--rounds", int, "federated rounds (default 10)"),
    ("--local-epochs", int, "local epochs per round (default 1)"),
    ("--batch-size", int, "local batch size (default 32)"),
    ("--optimizer", str, "sgd (default) or adam"),
    ("--lr", float, "learning rate (default 0.05)"),
    ("--lr-schedule", str, "the clients' learning rate over the rounds: constant (default) or cosine"),
    ("--lr-final", float, "with --lr-schedule cosine: the last round's learning rate (default 0)"),
    ("--keep", float, "fedzip, topk, stc: fraction of entries kept per tensor (default 0.01)"),
    ("--clusters", _clusters, "fedzip: 1..256 or auto; lowrank: 2..256 (default 3)"),
    ("--levels", int, "qsgd: quantisation levels, 1..255 (default 16)"),
    (
        "--rank",
        int,
        "weight matrices as rank-r factors: fedzip in place of Top-z (default 0: off); lowrank (default 1)",
    ),
    ("--iterations", int, "with --rank (or lowrank): subspace iterations per matrix (default 2)"),
    ("--link", str, "radio link of the energy estimate: lte (default), wifi or 3g"),
    ("--energy-train-seconds", float, "client training time in the energy model (default: as measured)"),
    ("--seed", int, "seed for partitioning, initialisation and training (default 0)"),
    ("--train-limit", int, "use a random subset of this many training examples (0: all)"),
    ("--test-limit", int, "use a random subset of this many test examples (0: all)"),
    ("--budget-bytes", int, "fedzip: payload size never to exceed, chosen per tensor (replaces --keep)"),
    ("--budget-ratio", float, "fedzip: the same as a compression ratio, e.g. 1000"),
    (
        "--budget-split",
        str,
        "fedzip budgets: error (per tensor, least squared error; default) or uniform (one keep for all tensors)",
    ),
    ("--warmup-rounds", int, "sparsity warm-up: keep decays from --warmup-start to --keep over these rounds"),
    ("--warmup-start", float, "kept fraction of round 1 with --warmup-rounds (default 0.25)"),
    ("--ef-momentum", float, "momentum correction of the error-feedback residual, e.g. 0.9 (needs +ef)"),
    ("--clip-norm", float, "clients clip every update to this L2 norm before accumulating it (needs +ef)"),
    ("--local-momentum", float, "momentum of the clients' local SGD (default 0)"),
    ("--server-optimizer", str, "fedavg (default), fedavgm or fedadam on the decoded updates"),
    ("--server-lr", float, "the server optimiser's learning rate (default: Flower's)"),
    (
        "--downlink",
        str,
        "compress downloads too with this codec (e.g. fedzip-dap, stc; default: float weights)",
    ),
    ("--downlink-keep", float, "the downlink codec's keep (default: the same as --keep)"),
    ("--downlink-budget-ratio", float, "fedzip downloads: compress each download at least this much"),
    ("--downlink-rank", int, "fedzip downloads: weight matrices as rank-r factors (default 0: off)"),
    ("--downlink-clusters", int, "the downlink codec's clusters (default: the same as --clusters)"),
    ("--downlink-iterations", int, "with --downlink-rank: subspace iterations per matrix (default 2)"),
    ("--test-every", int, "evaluate the test split every this many rounds and after the last (default 1)"),
    ("--validation", int, "hold out this many training examples (seeded) as a validation set (default 0)"),
    ("--min-clients", int, "go on while at least this many nodes are connected (default 1)"),
    ("--node-wait", float, "seconds to wait for all clients at the start, and for --min-clients later (120)"),
    ("--round-timeout", float, "seconds to wait for the replies of one round (default 600)"),
)

# on/off options (--x / --no-x), by ExperimentConfig field
_SWITCHES = {
    "transcode": "fedzip: also measure every payload in each encoding (huffman, position, dap)",
    "downlink_shared_start": "with --downlink: clients build the initial model from the run's seed, so "
    "round 1 downloads only its checksum",
}


def _experiment_config(args: argparse.Namespace, **fixed):
    from .fl.config import ExperimentConfig

    overrides = {}
    for flag, _, _ in _EXPERIMENT_OPTIONS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key in _SWITCHES:
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.corrupt_clients is not None:
        overrides["corrupt_clients"] = [int(c) for c in args.corrupt_clients.split(",") if c.strip()]
    overrides.update({k: v for k, v in fixed.items() if v is not None})
    if args.config:
        return ExperimentConfig.from_toml(args.config, **overrides)
    return ExperimentConfig.from_dict(overrides)


def _run(args: argparse.Namespace) -> None:
    from .fl.runner import run_experiment

    cfg = _experiment_config(args, codec=args.codec, error_feedback=args.error_feedback, out=args.out)
    summary = run_experiment(cfg)
    print(
        f"{summary['codec']}: final accuracy {summary['final_accuracy']:.4f}, "
        f"uplink {summary['uplink_bytes'] / 1e6:.3f} MB ({summary['compression_ratio'] or 0:.1f}x smaller), "
        f"upload energy {summary['upload_joules_per_client_round']:.3f} J per client per round on "
        f"{summary['link']} ({summary['upload_energy_saved_percent']:.1f}% saved), "
        f"{summary['failures']} failed replies; results in {cfg.out}"
    )


def _compare(args: argparse.Namespace) -> None:
    from .fl.config import parse_codec
    from .fl.runner import compare

    out = Path(args.out)
    if args.target is not None and not 0 < args.target <= 1:
        raise CliError(f"--target is an accuracy in (0, 1], got {args.target}")
    if args.plan:
        _compare_plan(args, out)
    else:
        codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
        if not codecs:
            raise CliError("--codecs needs at least one codec")
        for codec in codecs:
            parse_codec(codec)
        compare(_experiment_config(args), codecs, out, target=args.target)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}")


def _compare_plan(args: argparse.Namespace, out: Path) -> None:
    """The runs of a plan (each with its own options) compared in one report; finished runs are reused."""
    from .fl.plan import load_plan, run_plan
    from .fl.report import write_report

    flags = [flag for flag, _, _ in _EXPERIMENT_OPTIONS] + ["--corrupt-clients", "--config"]
    flags += ["--" + key.replace("_", "-") for key in _SWITCHES]
    given = [flag for flag in flags if getattr(args, flag[2:].replace("-", "_")) is not None]
    if given:
        raise CliError(f"--plan sets every option; {', '.join(given)} cannot be given with it")
    plan = load_plan(args.plan, out)
    if plan.seeds:
        raise CliError(
            f"plan {args.plan} repeats its runs over seeds {list(plan.seeds)}; fedzip compare runs each once: "
            "remove `seeds` from its [experiment] table (and set `seed` there)"
        )
    finished = run_plan(plan)
    write_report(out, [{**summary, "name": run.name} for run, summary in finished], args.target)


def _add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with an [experiment] table; options override it")
    for flag, kind, text in _EXPERIMENT_OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=text)
    for key, text in _SWITCHES.items():
        parser.add_argument(
            "--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None, help=text
        )
    parser.add_argument(
        "--corrupt-clients",
        help="fault injection: comma-separated partition ids that send corrupted payloads",
    )


class _Parser(argparse.ArgumentParser):
    """Bad options end in one line (and a pointer to --help), not a usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedzip", description="Compressed uploads for federated learning.")
    parser.add_argument("--version", action="version", version=f"fedzip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = commands.add_parser("bench", help="codec size, speed and memory next to zstd")
    bench.add_argument(
        "--params", type=_positive_int, default=25_000_000, help="size of the large update (0: skip it)"
    )
    bench.add_argument("--keep", type=_keep, default=0.01, help="fraction of entries kept (default 0.01)")
    bench.add_argument("--clusters", type=_clusters, default=3, help="1..256 or auto (default 3)")
    bench.add_argument("--encodings", default="huffman,position,dap", help="comma-separated encodings")
    bench.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baseline compressors to measure too (default {','.join(BASELINES)}; '' for none)",
    )
    bench.add_argument("--repeat", type=_positive_int, default=3, help="timing runs, best kept (default 3)")
    bench.add_argument("--seed", type=_positive_int, default=0)
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
        "--fl-rounds", type=_positive_int, default=6, help="simulated rounds for --fl (default 6)"
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

    run = commands.add_parser("run", help="one federated run on Flower's simulation engine")
    _add_experiment_options(run)
    run.add_argument(
        "--codec",
        help="none, fp16, topk, qsgd, signsgd, stc, fedzip-huffman, fedzip-position, "
        "fedzip-dap (default) or fedzip-auto; +ef adds error feedback",
    )
    run.add_argument(
        "--error-feedback",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="carry the residual between rounds",
    )
    run.add_argument("--out", help="output directory (default runs/run)")
    run.set_defaults(func=_run)

    comp = commands.add_parser("compare", help="several codecs on the same data and seed, with a report")
    _add_experiment_options(comp)
    comp.add_argument(
        "--codecs",
        default="none,fedzip-huffman,fedzip-position,fedzip-dap",
        help="comma-separated codecs (none, fp16, topk, qsgd, signsgd, stc, fedzip-huffman, fedzip-position, "
        "fedzip-dap, fedzip-auto); +ef adds error feedback",
    )
    comp.add_argument(
        "--plan",
        help="a plan file (experiments/*.toml) instead of --codecs: each run with its own options",
    )
    comp.add_argument(
        "--target",
        type=float,
        help="accuracy for the rounds/bytes-to-target table (default: FedAvg's final accuracy - 0.01)",
    )
    comp.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    comp.set_defaults(func=_compare)

    inspect = commands.add_parser("inspect", help="per-tensor breakdown of a payload file")
    inspect.add_argument("payload", help="a file holding one fedzip payload")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "repeat", 1) == 0:
        args.repeat = 1
    try:
        args.func(args)
    except CliError as exc:
        print(f"fedzip: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:  # FormatError and DataError included: one line
        print(f"fedzip: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"fedzip: error: {exc.name} is not installed; install fedzip[fl] for federated runs",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
