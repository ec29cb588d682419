"""``python -m research``: run the plans (resumable) and regenerate the results document."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .runs import DEFAULT_PLANS, SEEDED_OUT, UNSEEDED_OUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research",
        description="run the experiment plans (resumable) and regenerate the results",
    )
    parser.add_argument(
        "plans",
        nargs="*",
        help="plan files (default: research.runs.DEFAULT_PLANS: converge, extreme, curve and cross-device plans)",
    )
    parser.add_argument(
        "--out", help=f"run directories (default {SEEDED_OUT} for seeded plans, else {UNSEEDED_OUT})"
    )
    parser.add_argument(
        "--doc", default="docs/results.md", help="document to write (default docs/results.md)"
    )
    parser.add_argument("--only", help="comma-separated run names that may run; the rest are read from disk")
    parser.add_argument(
        "--seeds", help="comma-separated seeds that may run (seeded plans); the rest are read from disk"
    )
    parser.add_argument("--force", action="store_true", help="re-run selected runs even when results exist")
    parser.add_argument("--no-runs", action="store_true", help="only rewrite the document from finished runs")
    return parser


def reproduce(args: argparse.Namespace) -> Path:
    from rich.console import Console

    from fedzip.fl.plan import load_plan, run_plan

    from . import document, paper
    from .rates import cluster_section, first_round_update, rate_rows, rate_section

    console = Console(stderr=True)
    paths = args.plans or DEFAULT_PLANS
    seeded = [load_plan(path).seeds != () for path in paths]
    if any(seeded) and not all(seeded):
        raise ValueError("plans with seeds and plans without cannot make one document; reproduce them apart")
    out = Path(args.out or (SEEDED_OUT if all(seeded) else UNSEEDED_OUT))
    plans = [load_plan(path, out) for path in paths]
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    if only:
        known = {run.name for plan in plans for run in plan.runs}
        if only - known:
            raise ValueError(
                f"--only names unknown runs: {', '.join(sorted(only - known))}; known: {', '.join(sorted(known))}"
            )
    if args.no_runs:
        only = set()  # read finished runs, run nothing
    seeds = {int(k) for k in args.seeds.split(",") if k.strip()} if args.seeds else None
    results = [(plan, run_plan(plan, only=only, force=args.force, seeds=seeds)) for plan in plans]
    for _, finished in results:
        for run, _ in finished:
            if run.seed is not None:  # seeded runs live next to the document: tables and csv only
                Path(run.config.out, "accuracy.png").unlink(missing_ok=True)
    console.print("compression rates of a real paper-CNN update ...")
    started = time.perf_counter()
    update = first_round_update(plans[0].base)
    rates = rate_rows(update)
    seconds = time.perf_counter() - started
    if all(seeded):
        heading = "## Compression rate of each encoding on one real paper-CNN update"
        extra = rate_section(rates, seconds, heading)
        extra += cluster_section(update, "## Cluster count at low keep: bytes against error")
        return document.write_document(Path(args.doc), results, extra)
    named = [(plan, {run.name: summary for run, summary in finished}) for plan, finished in results]
    return paper.write_document(Path(args.doc), named, rates, out, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        doc = reproduce(args)
    except (ValueError, RuntimeError) as exc:
        print(f"python -m research: error: {exc}", file=sys.stderr)
        return 2
    print(f"results: {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
