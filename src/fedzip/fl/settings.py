"""The sections of an experiment config: settings that check themselves, each with its help text.

Each field carries its help text, and the command-line flag that sets it when that is not
``--<name>``, in its metadata (:mod:`fedzip.fl.options` makes ``fedzip run``'s options from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..feedback import check_options
from .data import parse_partition

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")


def option(default: Any, help: str, flag: str | None = None, **kwargs: Any) -> Any:
    """A field with its help text and (when it is not ``--<name>``) its command-line flag."""
    return field(default=default, metadata={"help": help, "flag": flag}, **kwargs)


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_count(name: str, value: Any, low: int) -> None:
    need(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{name} must be an integer >= {low}, got {value!r}",
    )


def check_number(name: str, value: Any, low: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > low if strict else value >= low)
    need(ok, f"{name} must be a number {'>' if strict else '>='} {low:g}, got {value!r}")


class Section:
    """A dataclass of settings that checks itself when built."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError saying what to change."""


@dataclass(frozen=True)
class DataSettings(Section):
    dataset: str = option("fashion-mnist", "data set name (MNIST-format IDX files)")
    data_dir: str = option("", "directory of MNIST-format IDX files (default: Debian's Fashion-MNIST)")
    partition: str = option("iid", "iid, dirichlet:<alpha> or classes:<k>")
    train_limit: int = option(0, "use a random subset of this many training examples (0: all)")
    test_limit: int = option(0, "use a random subset of this many test examples (0: all)")
    validation: int = option(0, "hold out this many training examples (seeded) as a validation set")

    def validate(self) -> None:
        parse_partition(self.partition)
        for name in ("train_limit", "test_limit", "validation"):
            check_count(name, getattr(self, name), 0)


@dataclass(frozen=True)
class TrainingSettings(Section):
    """The clients' local training."""

    local_epochs: int = option(1, "local epochs per round")
    batch_size: int = option(32, "local batch size")
    optimizer: str = option("sgd", "sgd or adam")
    lr: float = option(0.05, "learning rate")
    lr_schedule: str = option(
        "constant", "the learning rate over the rounds: constant or cosine (lr to lr_final)"
    )
    lr_final: float = option(0.0, "with lr_schedule cosine: the last round's learning rate")
    momentum: float = option(0.0, "momentum of the clients' local SGD", flag="--local-momentum")

    def validate(self) -> None:
        check_count("local_epochs", self.local_epochs, 1)
        check_count("batch_size", self.batch_size, 1)
        need(self.optimizer in ("sgd", "adam"), f"optimizer must be sgd or adam, got {self.optimizer!r}")
        check_number("lr", self.lr, strict=True)
        from .training import LR_SCHEDULES  # torch is imported when a config is checked, not with the CLI

        need(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        need(
            isinstance(self.lr_final, int | float) and 0 <= self.lr_final <= self.lr,
            f"lr_final must be from 0 to lr={self.lr:g} (the cosine schedule's last value), got {self.lr_final!r}",
        )
        need(
            not self.lr_final or self.lr_schedule != "constant",
            'lr_final is the end of a schedule: set lr_schedule = "cosine" too',
        )
        check_number("local momentum", self.momentum)


@dataclass(frozen=True)
class ServerSettings(Section):
    clients: int = option(10, "number of clients / SuperNodes")
    fraction: float = option(1.0, "fraction of clients trained per round")
    rounds: int = option(10, "federated rounds")
    test_every: int = option(1, "evaluate the test split every this many rounds and after the last")
    test_last: int = option(
        1,
        "evaluate the test split on each of the last this many rounds too; reports take the mean of "
        "test and of validation accuracy over them (sampled clients move the model round to round)",
    )
    optimizer: str = option(
        "fedavg", "fedavg, fedavgm or fedadam on the decoded updates", flag="--server-optimizer"
    )
    lr: float = option(0.0, "the server optimiser's learning rate (0: Flower's)", flag="--server-lr")
    momentum: float = option(0.9, "fedavgm's server momentum", flag="--server-momentum")
    shared_start: bool = option(
        False,
        "with a download codec: clients build the initial model from the run's seed, so round 1 "
        "downloads only its checksum",
        flag="--downlink-shared-start",
    )
    memory: str = option(
        "",
        "the server remembers every client's latest upload and corrects each round with them: "
        "fedvarp, mifa or ef21 ('': off; see fedzip.flower.memory)",
        flag="--server-memory",
    )
    min_clients: int = option(1, "go on while at least this many nodes are connected")
    node_wait: float = option(
        120.0, "seconds to wait for all clients at the start, and for min_clients later"
    )
    round_timeout: float = option(600.0, "seconds to wait for the replies of one round")

    def validate(self) -> None:
        for name in ("clients", "rounds", "test_every", "test_last"):
            check_count(name, getattr(self, name), 1)
        need(
            isinstance(self.fraction, int | float) and 0 < self.fraction <= 1,
            f"fraction must be in (0, 1], got {self.fraction!r}",
        )
        need(
            self.optimizer in SERVER_OPTIMIZERS,
            f"server optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {self.optimizer!r}",
        )
        check_number("server lr", self.lr)
        from ..flower.memory import check_memory

        check_memory(self.memory or None, False)
        check_number("server momentum", self.momentum)
        need(
            isinstance(self.min_clients, int) and 1 <= self.min_clients <= self.clients,
            f"min_clients must be an integer from 1 to clients={self.clients}, got {self.min_clients!r}",
        )
        for name in ("node_wait", "round_timeout"):
            check_number(name, getattr(self, name), strict=True)


@dataclass(frozen=True)
class FeedbackSettings(Section):
    """Error feedback: what a client's upload left out is added to its next update."""

    enabled: bool = option(False, "carry the residual between rounds", flag="--error-feedback")
    momentum: float = option(0.0, "momentum correction of the residual, e.g. 0.9", flag="--ef-momentum")
    masking: bool = option(True, "with momentum: DGC's factor masking", flag="--ef-masking")
    clip_norm: float = option(
        0.0, "clients clip every update to this L2 norm before accumulating it (0: off)"
    )
    age_decay: float = option(
        1.0, "a residual that waited age rounds is scaled by age_decay ** (age - 1)", flag="--ef-age-decay"
    )
    max_age: int = option(
        0, "a residual made more than this many rounds ago is dropped (0: never)", flag="--ef-max-age"
    )
    step_ahead: float = option(
        0.0, "clients train from the model plus this fraction of their residual", flag="--ef-step-ahead"
    )

    def validate(self) -> None:
        # 0 is "off" here for clipping and dropping; the ranges are ErrorFeedback's own
        check_number("clip_norm", self.clip_norm)
        check_count("max_age", self.max_age, 0)
        check_options(
            self.momentum, self.clip_norm or None, self.age_decay, self.max_age or None, self.step_ahead
        )
        shaped = self.momentum or self.clip_norm or self.age_decay != 1 or self.max_age or self.step_ahead
        need(
            not shaped or self.enabled,
            "momentum, clip_norm, age_decay, max_age and step_ahead act on the error-feedback residual: "
            "enable error feedback (+ef) too",
        )

    def strategy_options(self) -> dict[str, Any]:
        """FedZipStrategy's keyword arguments for momentum correction and clipping."""
        return {
            "momentum": self.momentum,
            "masking": self.masking,
            "clip_norm": self.clip_norm or None,
            "age_decay": self.age_decay,
            "max_age": self.max_age or None,
            "step_ahead": self.step_ahead,
        }


@dataclass(frozen=True)
class WarmupSettings(Section):
    """Sparsity warm-up (:class:`fedzip.schedule.KeepWarmup`): more sent in the first rounds."""

    rounds: int = option(
        0,
        "keep decays from the warm-up start to the codec's keep over these rounds (0: off)",
        flag="--warmup-rounds",
    )
    start: float = option(0.25, "kept fraction of round 1 during a warm-up", flag="--warmup-start")

    def validate(self) -> None:
        check_count("warm-up rounds", self.rounds, 0)
        need(
            isinstance(self.start, int | float) and 0 < self.start <= 1,
            f"warm-up start must be in (0, 1], got {self.start!r}",
        )

    def schedule(self) -> Any:
        from ..schedule import KeepWarmup

        return KeepWarmup(self.rounds, self.start) if self.rounds else None


SECTIONS: dict[str, type[Section]] = {
    "data": DataSettings,
    "training": TrainingSettings,
    "server": ServerSettings,
    "error_feedback": FeedbackSettings,
    "warmup": WarmupSettings,
}
