"""Experiment configuration: one dataclass, from CLI options or a TOML file."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codec import BUDGET_SPLITS
from ..energy import get_link
from .data import parse_partition
from .models import MODELS
from .training import LR_SCHEDULES

CODEC_NAMES = (
    "none",
    "fp16",
    "topk",
    "qsgd",
    "signsgd",
    "stc",
    "lowrank",
    "fedzip-huffman",
    "fedzip-position",
    "fedzip-dap",
    "fedzip-auto",
)
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
# Codecs whose algorithm includes residual accumulation: always run with error feedback.
ALWAYS_EF = ("stc",)


def parse_codec(name: str) -> tuple[str, bool]:
    """``<codec>[+ef]`` -> (codec, error feedback); ``stc`` always has it."""
    base, plus, suffix = name.partition("+")
    if base not in CODEC_NAMES or (plus and suffix != "ef"):
        raise ValueError(
            f"unknown codec {name!r}; choose from {', '.join(CODEC_NAMES)} (add +ef for error feedback)"
        )
    return base, bool(plus) or base in ALWAYS_EF


@dataclass
class ExperimentConfig:
    """Everything that defines a run; ``fedzip run --help`` documents each field."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    partition: str = "iid"
    model: str = "mlp"
    clients: int = 10
    fraction: float = 1.0
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    lr_schedule: str = "constant"  # the clients' lr over the rounds: constant, or cosine from lr to lr_final
    lr_final: float = 0.0  # cosine: the last round's learning rate
    codec: str = "fedzip-dap"
    keep: float = 0.01
    clusters: int | str = 3
    levels: int = 16  # qsgd
    rank: int = 0  # weight matrices as rank-r factors: fedzip in place of Top-z (0: off); lowrank (0: 1)
    iterations: int = 0  # the factors' subspace iterations per matrix (0: 2)
    link: str = "lte"  # radio link of the energy estimate: lte, wifi, 3g
    energy_train_seconds: float = 0.0  # client's training time in the energy model (0: as measured)
    error_feedback: bool = False
    seed: int = 0
    train_limit: int = 0  # 0: the whole training split
    test_limit: int = 0
    validation: int = 0  # training examples held out (seeded) to choose settings on; never trained on
    test_every: int = 1  # evaluate the test split every this many rounds (and after the last)
    transcode: bool = False  # fedzip: also measure each round's payloads in every encoding (lossless)
    # Extreme compression (docs/compressors.md): all off by default, the paper's setting.
    budget_bytes: int = 0  # fedzip: a payload size to never exceed instead of keep (0: off)
    budget_ratio: float = 0.0  # fedzip: the same as a compression ratio (0: off)
    budget_split: str = "error"  # fedzip budgets: "error" or "uniform" (FedZip's budget_split)
    warmup_rounds: int = 0  # sparsity warm-up: keep decays from warmup_start to keep over these rounds
    warmup_start: float = 0.25
    ef_momentum: float = 0.0  # DGC momentum correction of the error-feedback residual (0: off)
    masking: bool = True  # DGC factor masking, with ef_momentum
    clip_norm: float = 0.0  # clients clip each update to this L2 norm before accumulating it (0: off)
    local_momentum: float = 0.0  # momentum of the clients' local SGD
    server_optimizer: str = "fedavg"  # fedavg, fedavgm or fedadam, on the decoded updates
    server_lr: float = 0.0  # the server optimiser's learning rate (0: Flower's default)
    server_momentum: float = 0.9  # fedavgm
    downlink: str = ""  # compress downloads with this codec too (e.g. fedzip-dap, stc); "": float weights
    downlink_keep: float = 0.0  # the downlink codec's keep (0: the same as keep)
    downlink_budget_ratio: float = 0.0  # fedzip downloads: budget as a compression ratio (0: off)
    downlink_rank: int = 0  # fedzip downloads: matrices as rank-r factors in place of Top-z (0: off)
    downlink_clusters: int = 0  # the downlink codec's clusters (0: the same as clusters)
    downlink_iterations: int = 0  # fedzip downloads with downlink_rank: subspace iterations (0: 2)
    downlink_shared_start: bool = False  # clients build the initial model; round 1 sends its checksum
    corrupt_clients: list[int] = field(default_factory=list)  # fault injection: partitions sending garbage
    min_clients: int = 1  # the run goes on while at least this many nodes are connected
    node_wait: float = 120.0  # seconds to wait for all clients at the start, and for min_clients later
    round_timeout: float = 600.0  # seconds to wait for the replies of one round
    out: str = "runs/run"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        parse_partition(self.partition)
        base, ef = parse_codec(self.codec)
        if ef:
            self.codec, self.error_feedback = base, True
        need(self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("clients", "rounds", "local_epochs", "batch_size", "test_every"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be an integer >= 1, got {value!r}",
            )
        for name in (
            "train_limit",
            "test_limit",
            "seed",
            "validation",
            "rank",
            "iterations",
            "downlink_rank",
            "downlink_clusters",
            "downlink_iterations",
        ):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
        need(0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction!r}")
        need(
            isinstance(self.min_clients, int) and 1 <= self.min_clients <= self.clients,
            f"min_clients must be an integer from 1 to clients={self.clients}, got {self.min_clients!r}",
        )
        for name in ("node_wait", "round_timeout"):
            value = getattr(self, name)
            need(
                isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
                f"{name} must be a number of seconds > 0, got {value!r}",
            )
        need(self.optimizer in ("sgd", "adam"), f"optimizer must be sgd or adam, got {self.optimizer!r}")
        need(
            self.server_optimizer in SERVER_OPTIMIZERS,
            f"server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {self.server_optimizer!r}",
        )
        for name in (
            "budget_ratio",
            "downlink_budget_ratio",
            "clip_norm",
            "server_lr",
            "local_momentum",
            "energy_train_seconds",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)!r}")
        need(
            isinstance(self.budget_bytes, int) and self.budget_bytes >= 0,
            f"budget_bytes must be an integer >= 0, got {self.budget_bytes!r}",
        )
        need(not (self.budget_bytes and self.budget_ratio), "set budget_bytes or budget_ratio, not both")
        need(
            self.budget_split in BUDGET_SPLITS,
            f"budget_split must be {' or '.join(BUDGET_SPLITS)}, got {self.budget_split!r}",
        )
        need(
            not (self.budget_bytes or self.budget_ratio) or self.codec.startswith("fedzip"),
            f"budget_bytes and budget_ratio are FedZip options; codec is {self.codec!r}",
        )
        need(0 <= self.ef_momentum < 1, f"ef_momentum must be in [0, 1), got {self.ef_momentum!r}")
        need(
            not (self.ef_momentum or self.clip_norm) or self.error_feedback,
            "ef_momentum and clip_norm act on the error-feedback residual: add +ef to the codec",
        )
        need(
            isinstance(self.warmup_rounds, int) and self.warmup_rounds >= 0,
            f"warmup_rounds must be an integer >= 0, got {self.warmup_rounds!r}",
        )
        need(0 < self.warmup_start <= 1, f"warmup_start must be in (0, 1], got {self.warmup_start!r}")
        need(
            self.downlink == "" or self.downlink in CODEC_NAMES,
            f"downlink must be empty or one of {', '.join(CODEC_NAMES)}, got {self.downlink!r}",
        )
        need(0 <= self.downlink_keep <= 1, f"downlink_keep must be in [0, 1], got {self.downlink_keep!r}")
        need(
            not self.downlink_budget_ratio or self.downlink.startswith("fedzip"),
            f"downlink_budget_ratio needs a FedZip downlink codec; downlink is {self.downlink!r}",
        )
        need(
            not self.downlink_rank or (self.downlink.startswith("fedzip") and not self.downlink_budget_ratio),
            "downlink_rank needs a FedZip downlink codec and no downlink_budget_ratio",
        )
        need(
            not self.downlink_clusters or self.downlink.startswith("fedzip") or self.downlink == "lowrank",
            f"downlink_clusters is an option of fedzip and lowrank downloads; downlink is {self.downlink!r}",
        )
        need(
            not self.downlink_iterations or bool(self.downlink_rank),
            "downlink_iterations is a setting of the download's factors: set downlink_rank too",
        )
        need(
            not self.iterations or self.codec == "lowrank" or bool(self.rank),
            "iterations is a setting of the factors: set rank too (or use the lowrank codec)",
        )
        need(
            not self.downlink_shared_start or bool(self.downlink),
            "downlink_shared_start needs a compressed downlink: set downlink too",
        )
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        need(
            0 <= self.lr_final <= self.lr,
            f"lr_final must be from 0 to lr={self.lr:g} (the cosine schedule's last value), got {self.lr_final!r}",
        )
        need(
            not self.lr_final or self.lr_schedule != "constant",
            'lr_final is the end of a schedule: set lr_schedule = "cosine" too',
        )
        need(0 < self.keep <= 1, f"keep must be in (0, 1], got {self.keep!r}")
        need(
            isinstance(self.levels, int) and 1 <= self.levels <= 255,
            f"levels must be an integer from 1 to 255, got {self.levels!r}",
        )
        factored = self.codec == "lowrank" or bool(self.rank or self.downlink_rank)
        need(
            not self.rank or self.codec == "lowrank" or self.codec.startswith("fedzip"),
            f"rank is an option of fedzip and lowrank; codec is {self.codec!r}",
        )
        need(
            not (self.rank and (self.budget_bytes or self.budget_ratio)),
            "rank sets the size of the factors: give it or budget_bytes/budget_ratio, not both",
        )
        need(
            not factored or (isinstance(self.clusters, int) and self.clusters >= 2),
            f"factors need clusters from 2 to 256, got {self.clusters!r}",
        )
        get_link(self.link)
        need(
            self.clusters == "auto" or (isinstance(self.clusters, int) and 1 <= self.clusters <= 256),
            f"clusters must be 1..256 or auto, got {self.clusters!r}",
        )
        need(
            all(isinstance(c, int) and 0 <= c < self.clients for c in self.corrupt_clients),
            f"corrupt_clients must be partition ids in [0, {self.clients}), got {self.corrupt_clients!r}",
        )
        # the codecs check their own ranges (clusters, iterations, ...): build them once here
        from ..registry import get_compressor

        for direction, config in (("", self.compressor_config()), ("downlink ", self.downlink_config())):
            try:
                if config is not None:
                    get_compressor(config)
            except ValueError as exc:
                raise ValueError(f"the {direction}codec {config['id']!r}: {exc}") from None

    @property
    def label(self) -> str:
        label = self.codec + ("+ef" if self.error_feedback and self.codec not in ALWAYS_EF else "")
        return label + (f" / down {self.downlink}" if self.downlink else "")

    def downlink_config(self) -> dict[str, Any] | None:
        """The downlink compressor's config, or None when downloads travel as float weights."""
        if not self.downlink:
            return None
        return self._codec_config(
            self.downlink,
            self.downlink_keep or self.keep,
            0,
            self.downlink_budget_ratio,
            self.downlink_rank,
            self.downlink_clusters or self.clusters,
            self.downlink_iterations,
        )

    def compressor_config(self) -> dict[str, Any]:
        return self._codec_config(
            self.codec,
            self.keep,
            self.budget_bytes,
            self.budget_ratio,
            self.rank,
            self.clusters,
            self.iterations,
        )

    def _codec_config(
        self,
        codec: str,
        keep: float,
        budget_bytes: int,
        budget_ratio: float,
        rank: int,
        clusters: int | str,
        iterations: int,
    ) -> dict[str, Any]:
        if codec in ("none", "fp16", "signsgd"):
            return {"id": codec}
        if codec in ("topk", "stc"):
            return {"id": codec, "keep": keep}
        if codec == "qsgd":
            return {"id": "qsgd", "levels": self.levels}
        if codec == "lowrank":
            config = {"id": "lowrank", "rank": rank or 1, "clusters": clusters}
        else:
            config = {
                "id": "fedzip",
                "keep": keep,
                "clusters": clusters,
                "encoding": codec.split("-", 1)[1],
                "sparsify_1d": False,
            }
            if budget_bytes:
                config["budget_bytes"] = budget_bytes
            if budget_ratio:
                config["budget_ratio"] = budget_ratio
            if (budget_bytes or budget_ratio) and self.budget_split != "error":
                config["budget_split"] = self.budget_split
            if rank:
                config["rank"] = rank
        if iterations:
            config["iterations"] = iterations
        return config

    def feedback_settings(self) -> dict[str, Any]:
        """FedZipStrategy's keyword arguments for warm-up, momentum correction and clipping."""
        from ..schedule import KeepWarmup

        return {
            "warmup": KeepWarmup(self.warmup_rounds, self.warmup_start) if self.warmup_rounds else None,
            "momentum": self.ef_momentum,
            "masking": self.masking,
            "clip_norm": self.clip_norm or None,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        normalised = {key.replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise ValueError(
                f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**normalised)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ExperimentConfig:
        try:
            with open(path, "rb") as handle:
                values = tomllib.load(handle)
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        values = dict(values.get("experiment", values))
        values.pop("seeds", None)  # a plan's: one config is one seed
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_toml(self) -> str:
        lines = ["[experiment]"]
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
