"""The ``fedzip`` command: ``bench``, ``run``, ``compare`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from . import bench, experiments
from .common import CliError, Parser


def _inspect(args: argparse.Namespace) -> None:
    from ..payload import inspect

    path = Path(args.payload)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    layout = None
    if args.layout:
        import numpy as np

        source = Path(args.layout)
        if not source.is_file():
            raise CliError(f"no such file: {source}")
        with np.load(source) as arrays:  # the model's arrays, in their order
            layout = {name: arrays[name] for name in arrays.files}
    report = inspect(path.read_bytes(), layout=layout)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedzip", description="Compressed uploads for federated learning.")
    parser.add_argument("--version", action="version", version=f"fedzip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    bench.add_command(commands)
    experiments.add_commands(commands)

    inspect = commands.add_parser("inspect", help="per-tensor breakdown of a payload file")
    inspect.add_argument("payload", help="a file holding one fedzip payload")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument(
        "--layout", help="an .npz of the model's arrays, for a keyed payload (made with known_layout=True)"
    )
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
            f"fedzip: error: {exc.name} is not installed; install fedzip[experiments] for federated runs",
            file=sys.stderr,
        )
        return 2
    return 0
