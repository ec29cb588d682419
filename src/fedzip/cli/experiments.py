"""``fedzip run`` and ``fedzip compare``: federated runs on Flower's simulation engine, and their report.

Their options are made from :class:`fedzip.fl.config.ExperimentConfig`'s fields (help text and flag
in each field's metadata); codec options go into the codec's table, where the compressor checks them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..fl.options import CODECS_HELP, add_experiment_options, experiment_config, given_options, option_flags
from .common import CliError


def add_commands(commands: Any) -> None:
    """The ``run`` and ``compare`` commands and their options."""
    run = commands.add_parser("run", help="one federated run on Flower's simulation engine")
    add_experiment_options(run)
    run.add_argument("--codec", help=f"the upload codec: {CODECS_HELP} (default fedzip-dap)")
    run.add_argument("--out", help="output directory (default runs/run)")
    run.set_defaults(func=_run)

    comp = commands.add_parser("compare", help="several codecs on the same data and seed, with a report")
    add_experiment_options(comp)
    comp.add_argument(
        "--codecs",
        default="none,fedzip-huffman,fedzip-position,fedzip-dap",
        help=f"comma-separated upload codecs: {CODECS_HELP}; codec options apply to those that take them",
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


def _run(args: argparse.Namespace) -> None:
    from ..fl.runner import run_experiment

    cfg = experiment_config(args, args.codec, args.out)
    summary = run_experiment(cfg)
    print(
        f"{summary['codec']}: final accuracy {summary['final_accuracy']:.4f}, "
        f"uplink {summary['uplink_bytes'] / 1e6:.3f} MB ({summary['compression_ratio'] or 0:.1f}x smaller), "
        f"upload energy {summary['upload_joules_per_client_round']:.3f} J per client per round on "
        f"{summary['link']} ({summary['upload_energy_saved_percent']:.1f}% saved), "
        f"{summary['failures']} failed replies; results in {cfg.out}"
    )


def _compare(args: argparse.Namespace) -> None:
    from ..fl.config import compressor_options, parse_codec
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
        taken: set[str] = set()
        for codec in codecs:
            taken.update(compressor_options(parse_codec(codec)[0]["id"]))
        options = given_options(args, "upload")
        unused = sorted(set(options) - taken)
        if unused:
            raise CliError(
                f"no codec of --codecs takes {', '.join('--' + o.replace('_', '-') for o in unused)}"
            )
        compare(experiment_config(args), codecs, out, target=args.target, options=options)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}")


def _compare_plan(args: argparse.Namespace, out: Path) -> None:
    """The runs of a plan (each with its own options) compared in one report; finished runs are reused."""
    from ..fl.plan import load_plan, run_plan
    from ..fl.report import write_report

    skip = {"func", "command", "plan", "codecs", "target", "out"}
    flags = option_flags()
    given = sorted(flags.get(d, d) for d, value in vars(args).items() if d not in skip and value is not None)
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
