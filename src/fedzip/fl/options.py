"""Experiment settings as options: ``fedzip run``'s flags, and the same names in a Flower run config.

Made from :class:`~fedzip.fl.config.ExperimentConfig`'s fields (the help text and flag in each
field's metadata); codec options go into the codec's table, where the compressor checks them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from ..records import ENCODINGS
from ..registry import available
from .config import SECTIONS, ExperimentConfig, parse_codec


def clusters(text: str) -> int | str:
    """``auto`` or an integer (the codec checks the range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def boolean(text: str) -> bool:
    """``true`` or ``false`` (also 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


# Codec options: (option of the compressor, type, help). --keep etc. set the upload codec's,
# --downlink-keep etc. the download codec's; a compressor refuses an option it does not take.
CODEC_OPTIONS = (
    ("keep", float, "fraction of entries kept per tensor (fedzip, topk, stc)"),
    ("clusters", clusters, "k-means clusters, or auto (fedzip); factor levels (lowrank)"),
    ("levels", int, "quantisation levels (qsgd)"),
    ("rank", int, "weight matrices as rank-r factors (fedzip: in place of Top-z; lowrank)"),
    ("iterations", int, "with rank: subspace iterations per matrix"),
    ("budget_bytes", int, "fedzip: payload size never to exceed, chosen per tensor (replaces keep)"),
    ("budget_ratio", float, "fedzip: the same as a compression ratio, e.g. 1000"),
    ("budget_split", str, "fedzip budgets: error (per tensor, least squared error) or uniform"),
    ("known_layout", boolean, "fedzip: true leaves tensor names and shapes out (the server knows the model)"),
)
DOWNLOAD_OPTIONS = ("keep", "clusters", "rank", "iterations", "budget_ratio")
CODECS_HELP = ", ".join([*(n for n in available() if n != "fedzip"), *(f"fedzip-{e}" for e in ENCODINGS)]) + (
    "; +ef adds error feedback"
)


def _config_options() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """(section or "", dest, field) of every experiment setting with a help text, but ``out``."""
    for item in dataclasses.fields(ExperimentConfig):
        if "help" in item.metadata and item.name != "out":
            yield "", item.name, item
    for section, cls in SECTIONS.items():
        for item in dataclasses.fields(cls):
            yield section, f"{section}.{item.name}", item


def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def option_flags() -> dict[str, str]:
    """Each option's destination (``server.rounds``, ``upload.keep``) -> its flag (``--rounds``, ``--keep``)."""
    flags = {dest: _flag(item) for _, dest, item in _config_options()}
    for name, _, _ in CODEC_OPTIONS:
        flags[f"upload.{name}"] = "--" + name.replace("_", "-")
        if name in DOWNLOAD_OPTIONS:
            flags[f"download.{name}"] = "--downlink-" + name.replace("_", "-")
    return {**flags, "config": "--config", "downlink": "--downlink"}


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with an [experiment] table; options override it")
    types = {"int": int, "float": float, "str": str, "list[int]": _id_list}
    for _, dest, item in _config_options():
        text = (
            f"{item.metadata['help']} (default {item.default!r})"
            if item.default is not dataclasses.MISSING
            else item.metadata["help"]
        )
        if item.type == "bool":
            parser.add_argument(
                _flag(item), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(
                _flag(item),
                dest=dest,
                type=types[item.type],
                default=None,
                metavar=item.name.upper(),
                help=text,
            )
    for name, kind, text in CODEC_OPTIONS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=f"upload.{name}", type=kind, metavar=name.upper(), help=text
        )
    parser.add_argument(
        "--downlink", help=f"compress downloads too with this codec ({CODECS_HELP.split(';')[0]})"
    )
    for name, kind, _ in CODEC_OPTIONS:
        if name in DOWNLOAD_OPTIONS:
            flag = "--downlink-" + name.replace("_", "-")
            parser.add_argument(
                flag,
                dest=f"download.{name}",
                type=kind,
                metavar=name.upper(),
                help=f"the download codec's {name}",
            )


def given_options(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The options given on the command line whose dest starts with ``prefix.``."""
    return {
        dest.split(".", 1)[1]: value
        for dest, value in vars(args).items()
        if dest.startswith(prefix + ".") and value is not None
    }


def experiment_config(args: argparse.Namespace, codec: str | None = None, out: str | None = None):
    """The config of ``--config`` (or the defaults) with every option given on top of it."""
    cfg = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    changes: dict[str, Any] = {}
    for section, dest, item in _config_options():
        value = getattr(args, dest)
        if value is not None and not section:
            changes[item.name] = value
    if out:
        changes["out"] = out
    upload = given_options(args, "upload")
    if codec:
        changes.update(cfg.codec_changes(codec, upload))
    elif upload:
        changes["upload"] = {**cfg.upload, **upload}
    download = given_options(args, "download")
    if args.downlink:
        changes["download"] = {**parse_codec(args.downlink)[0], **download}
    elif download:
        if cfg.download is None:
            raise ValueError("--downlink-* options need a download codec: give --downlink too")
        changes["download"] = {**cfg.download, **download}
    for section in SECTIONS:  # --(no-)error-feedback wins over a codec's +ef
        if given := given_options(args, section):
            changes[section] = {**changes.get(section, {}), **given}
    # one replace: a setting may need another (a shared start needs the download codec)
    return cfg.replace(**changes)


def from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """A Flower run config whose keys are ``fedzip run``'s options (``rounds``, ``keep``, ``codec``,
    ``error-feedback``, ...); an empty string leaves an option at its default."""
    parser = argparse.ArgumentParser(prog="run config", exit_on_error=False)
    add_experiment_options(parser)
    parser.add_argument("--codec")
    parser.add_argument("--out")
    argv: list[str] = []
    for key, value in run_config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value != "":
            argv += [flag, str(value)]
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise ValueError(f"run config: {exc}") from None
    if unknown:
        keys = [arg[2:] for arg in unknown if arg.startswith("--")]
        raise ValueError(f"run config: unknown key(s) {', '.join(keys)}; the keys are fedzip run's options")
    return experiment_config(args, args.codec, args.out)
