"""Experiment configuration: sections that validate themselves, the same shape in Python and TOML.

    [experiment]                 model, seed, link, out, ...
    [experiment.data]            data set, partition, limits, validation split
    [experiment.training]        the clients' local training
    [experiment.server]          clients, rounds, sampling, server optimiser, timeouts
    [experiment.upload]          a compressor config ({"id": "fedzip", "keep": 0.01, ...})
    [experiment.download]        the same for downloads (absent: float weights)
    [experiment.error_feedback]  residual carried between rounds, its momentum and clipping
    [experiment.warmup]          sparsity warm-up

The codec sections are compressor configs: the compressor checks them and
fills in its own defaults (:func:`fedzip.get_compressor`). Every field has a
``help`` text (and the CLI flag that sets it) in its metadata; ``fedzip run``
builds its options from them. The flat files of earlier versions load
through :mod:`fedzip.fl.legacy`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..abc import Compressor
from ..energy import get_link
from ..records import ENCODINGS
from ..registry import available, compressor_class, get_compressor
from .settings import (
    SECTIONS,
    DataSettings,
    FeedbackSettings,
    Section,
    ServerSettings,
    TrainingSettings,
    WarmupSettings,
    check_count,
    check_number,
    need,
    option,
)


def build_compressor(config: Mapping[str, Any], direction: str = "upload") -> Compressor:
    """The compressor of a codec table; ValueError naming the direction when it refuses the table."""
    if not isinstance(config, Mapping) or "id" not in config:
        raise ValueError(
            f'the {direction} codec needs a table with an id, e.g. {{id = "fedzip"}}; got {config!r}'
        )
    try:
        return get_compressor(config)
    except ValueError as exc:
        raise ValueError(f"the {direction} codec {config['id']!r}: {exc}") from None


def compressor_options(codec_id: str) -> list[str]:
    """The options a compressor's config takes."""
    return compressor_class(codec_id).options()


def codec_name(config: Mapping[str, Any]) -> str:
    """A codec config's short name: its id, with the encoding for FedZip (``fedzip-dap``)."""
    return f"fedzip-{config['encoding']}" if config["id"] == "fedzip" else str(config["id"])


def parse_codec(name: str) -> tuple[dict[str, Any], bool]:
    """``<codec>[+ef]`` (``stc``, ``fedzip-dap+ef``, ...) -> (codec config, error feedback).

    A compressor that only works with its residual (STC) gets error feedback
    without the suffix.
    """
    base, plus, suffix = name.partition("+")
    fedzip, dash, encoding = base.partition("-")
    config: dict[str, Any] = (
        {"id": "fedzip", "encoding": encoding} if fedzip == "fedzip" and dash else {"id": base}
    )
    unknown = config["id"] not in available() or base == "fedzip"
    if unknown or (plus and suffix != "ef") or config.get("encoding", "dap") not in ENCODINGS:
        names = [n for n in available() if n != "fedzip"] + [f"fedzip-{e}" for e in ENCODINGS]
        raise ValueError(
            f"unknown codec {name!r}; choose from {', '.join(names)} (add +ef for error feedback)"
        )
    return config, bool(plus) or compressor_class(config["id"]).needs_error_feedback


@dataclass(frozen=True, eq=False)
class ExperimentConfig:
    """Everything that defines a run; ``fedzip run --help`` documents each field."""

    model: str = option(
        "mlp", "cnn (the paper's, 1.2M parameters), mlp, resnet (BatchNorm, 0.3M) or vit (transformer, 0.3M)"
    )
    seed: int = option(0, "seed for partitioning, initialisation and training")
    link: str = option("lte", "radio link of the energy estimate: lte, wifi or 3g")
    energy_train_seconds: float = option(0.0, "client training time in the energy model (0: as measured)")
    transcode: bool = option(
        False, "fedzip: also measure every payload in each encoding (huffman, position, dap)"
    )
    corrupt_clients: list[int] = field(
        default_factory=list, metadata={"help": "fault injection: partition ids that send corrupted payloads"}
    )
    out: str = option("runs/run", "output directory")
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    upload: dict[str, Any] = field(default_factory=lambda: {"id": "fedzip"})
    download: dict[str, Any] | None = None
    error_feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    warmup: WarmupSettings = field(default_factory=WarmupSettings)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(cls, value, name))
            elif not isinstance(value, cls):
                raise ValueError(f"[{name}] must be a table of settings, got {value!r}")
        # Codec tables are kept as given (the options a user wrote), checked by their compressor,
        # which is built once here: a config is a value, and it is asked for its compressors often.
        object.__setattr__(self, "upload", dict(self.upload))
        built = build_compressor(self.upload)
        if self.download is not None:
            object.__setattr__(self, "download", dict(self.download))
        down = None if self.download is None else build_compressor(self.download, "download")
        object.__setattr__(self, "_compressors", (built, down))
        object.__setattr__(self, "corrupt_clients", list(self.corrupt_clients))
        self.validate()

    def validate(self) -> None:
        """Rules across sections (each section and codec checks its own)."""
        from .models import MODELS

        need(self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        check_count("seed", self.seed, 0)
        get_link(self.link)
        check_number("energy_train_seconds", self.energy_train_seconds)
        need(
            all(isinstance(c, int) and 0 <= c < self.server.clients for c in self.corrupt_clients),
            f"corrupt_clients must be partition ids in [0, {self.server.clients}), got {self.corrupt_clients!r}",
        )
        need(
            not self.server.shared_start or self.download is not None,
            "a shared start needs a compressed download: set a download codec too",
        )
        uploads = self.compressor()
        need(
            not uploads.needs_error_feedback or self.error_feedback.enabled,
            f"{uploads.codec_id} works only with its residual: enable error feedback",
        )
        from ..flower.memory import check_memory

        check_memory(self.server.memory or None, self.error_feedback.enabled)
        if self.warmup.rounds:
            self.warmup.schedule().config(1, self.upload)  # a codec with a keep or a budget

    def compressor(self) -> Compressor:
        """The upload compressor."""
        return self._compressors[0]

    def download_compressor(self) -> Compressor | None:
        return self._compressors[1]

    def __eq__(self, other: object) -> bool:
        """Equal when every setting is, codec tables compared as the compressors they build."""
        return type(other) is type(self) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> dict[str, Any]:
        key = self.to_dict()
        key["upload"] = self.compressor().get_config()
        download = self.download_compressor()
        key["download"] = None if download is None else download.get_config()
        return key

    @property
    def codec(self) -> str:
        """The upload codec's short name (``fedzip-dap``, ``stc``, ...)."""
        return codec_name(self.compressor().get_config())

    @property
    def downlink(self) -> str:
        """The download codec's short name; "" when downloads are float weights."""
        return "" if self.download is None else codec_name(self.download_compressor().get_config())

    @property
    def label(self) -> str:
        needs = self.compressor().needs_error_feedback
        label = self.codec + ("+ef" if self.error_feedback.enabled and not needs else "")
        label += f"+{self.server.memory}" if self.server.memory else ""
        return label + (f" / down {self.downlink}" if self.downlink else "")

    def with_codec(self, name: str, options: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """This run with upload codec ``name`` (``stc``, ``fedzip-dap+ef``: see :func:`parse_codec`)."""
        return self.replace(**self.codec_changes(name, options))

    def codec_changes(self, name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The :meth:`replace` changes that make ``name`` the upload codec.

        ``options`` go into the codec's table (the compressor refuses those it does not take); this
        config's own options of the codec are kept when it names the same compressor.
        """
        config, feedback = parse_codec(name)
        if config["id"] == self.upload["id"]:
            config = {**self.upload, **config}
        return {"upload": {**config, **(options or {})}, "error_feedback": {"enabled": feedback}}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes``: top-level fields, whole codec configs, or settings of a section
        (``replace(training={"lr": 0.1})`` changes the learning rate alone)."""
        merged: dict[str, Any] = {}
        for key, value in changes.items():
            if key in SECTIONS and isinstance(value, Mapping):
                value = dataclasses.replace(getattr(self, key), **dict(value))
            merged[key] = value
        return dataclasses.replace(self, **merged)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """From nested settings (the TOML shape); a flat dict of an earlier version is migrated."""
        from . import legacy

        values = _keys(values)
        if legacy.is_flat(values):
            values = legacy.migrate(values)
        return cls(**_known(cls, values, "unknown config key(s)"))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ExperimentConfig:
        """The ``[experiment]`` table of a TOML file (a config or a plan); ``overrides`` as in :meth:`replace`."""
        try:
            with open(path, "rb") as handle:
                values = tomllib.load(handle)
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        values = dict(values.get("experiment", values))
        values.pop("seeds", None)  # a plan's: one config is one seed
        return cls.from_dict(values).replace(**overrides)

    def to_toml(self) -> str:
        plain, tables = [], []
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                tables.append(f"\n[experiment.{key}]")
                tables += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
            elif value is not None:
                plain.append(f"{key} = {_toml_value(value)}")
        return "\n".join(["[experiment]", *plain, *tables]) + "\n"


def _build(cls: type[Section], values: Mapping[str, Any], name: str) -> Section:
    return cls(**_known(cls, _keys(values), f"unknown key(s) in [{name}]"))


def _keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """TOML and run configs write ``local-epochs``; the fields are ``local_epochs``."""
    return {key.replace("-", "_"): value for key, value in values.items()}


def _known(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` when each is a field of ``cls``; ValueError listing the fields otherwise."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
