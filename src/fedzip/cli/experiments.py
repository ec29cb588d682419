"""``fedzip run`` and ``fedzip compare``: federated runs on Flower's simulation engine, and their report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import CliError, clusters

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
    ("--clusters", clusters, "fedzip: 1..256 or auto; lowrank: 2..256 (default 3)"),
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


def add_commands(commands: Any) -> None:
    """The ``run`` and ``compare`` commands and their options."""
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


def _experiment_config(args: argparse.Namespace, **fixed):
    from ..fl.config import ExperimentConfig

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
    from ..fl.runner import run_experiment

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
    from ..fl.config import parse_codec
    from ..fl.runner import compare

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
    from ..fl.plan import load_plan, run_plan
    from ..fl.report import write_report

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
