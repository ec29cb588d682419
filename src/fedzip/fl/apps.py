"""The Flower ClientApp and ServerApp that run fedzip experiments.

The same apps serve Flower's simulation engine (``fedzip run``) and its
deployment engine (SuperLink + SuperNodes, see docs/deployment.md): clients get
their settings from the train message, the server from the run config.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from logging import WARNING
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from ..flower import FedZipStrategy, TrafficTracker, fedzip_mod, protocol, shared_start_mod
from ..records import transcode
from . import data as datamod
from . import models, training
from .config import ExperimentConfig
from .options import from_run_config
from .store import TRANSCODED, RoundRecord, write_results

SILENT_ROUNDS = 3  # rounds in a row without any reply after which a run stops


def client_settings(cfg: ExperimentConfig) -> dict[str, int | float | str]:
    """What every client needs to know, sent in the train message's ConfigRecord."""
    return {
        "data-dir": cfg.data.data_dir,
        "partition": cfg.data.partition,
        "model": cfg.model,
        "local-epochs": cfg.training.local_epochs,
        "batch-size": cfg.training.batch_size,
        "optimizer": cfg.training.optimizer,
        "local-momentum": cfg.training.momentum,
        "lr": cfg.training.lr,
        "lr-schedule": cfg.training.lr_schedule,
        "lr-final": cfg.training.lr_final,
        "rounds": cfg.server.rounds,
        "seed": cfg.seed,
        "train-limit": cfg.data.train_limit,
        "validation": cfg.data.validation,
        "corrupt-clients": ",".join(map(str, cfg.corrupt_clients)),
    }


def _partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    return int(node["partition-id"]), int(node["num-partitions"])


def corrupt_payload_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fault injection: corrupt the payload of the partitions listed in ``corrupt-clients``.

    Installed outside :func:`fedzip_mod`; a no-op unless the run asks for it.
    """
    reply = call_next(msg, context)
    config = msg.content.config_records.get("config")
    targets = str(config.get("corrupt-clients", "")) if config else ""
    if not targets or reply.has_error() or protocol.PAYLOAD not in reply.content.array_records:
        return reply
    partition, _ = _partition(context)
    if partition in {int(t) for t in targets.split(",")}:
        payload = bytearray(protocol.payload_bytes(reply.content.array_records[protocol.PAYLOAD]))
        rng = np.random.default_rng(int(config.get("server-round", 0)) * 1000 + partition)
        for index in rng.integers(0, len(payload), size=8):
            payload[index] ^= 0xA5
        reply.content[protocol.PAYLOAD] = protocol.payload_record(bytes(payload))
    return reply


def initial_model(msg: Message, context: Context) -> ArrayRecord:
    """The run's initial model, built as the server builds it (same code, same seed)."""
    config = msg.content["config"]
    _, _, classes = _client_data(msg, context)
    return ArrayRecord(
        training.fast_layout(models.build(str(config["model"]), classes, int(config["seed"]))).state_dict()
    )


client_app = ClientApp(mods=[corrupt_payload_mod, shared_start_mod(initial_model), fedzip_mod])


@functools.lru_cache(maxsize=4)
def client_examples(
    data_dir: str, validation: int, train_limit: int, seed: int, partition: str, partitions: int, index: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This client's training examples as tensors, and the number of classes (once per process)."""
    dataset = datamod.split_for(data_dir or None, validation, train_limit, 0, seed).train_test
    own = datamod.partition_indices(dataset.train_labels.tobytes(), partition, partitions, seed)[index]
    return (
        training.to_tensor(dataset.train_images[own]),
        torch.from_numpy(dataset.train_labels[own]),
        dataset.classes,
    )


def _client_data(msg: Message, context: Context) -> tuple[torch.Tensor, torch.Tensor, int]:
    config = msg.content["config"]
    partition, partitions = _partition(context)
    return client_examples(
        str(config["data-dir"]),
        int(config.get("validation", 0)),
        int(config["train-limit"]),
        int(config["seed"]),
        str(config["partition"]),
        partitions,
        partition,
    )


@functools.lru_cache(maxsize=2)
def _client_model(name: str, classes: int) -> torch.nn.Module:
    """One model per process, loaded with the global weights every round."""
    return training.fast_layout(models.build(name, classes))


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    partition, _ = _partition(context)
    # Clients run side by side, one core each: faster than one client on two cores.
    torch.set_num_threads(1)
    seed = int(config["seed"])
    images, labels, classes = _client_data(msg, context)
    model = _client_model(str(config["model"]), classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    round_seed = seed * 100_003 + partition * 1009 + int(config.get("server-round", 0))
    started = time.perf_counter()
    loss = training.train(
        model,
        images,
        labels,
        int(config["local-epochs"]),
        int(config["batch-size"]),
        str(config["optimizer"]),
        training.round_lr(
            float(config["lr"]),
            str(config.get("lr-schedule", "constant")),
            float(config.get("lr-final", 0.0)),
            int(config.get("server-round", 1)),
            int(config.get("rounds", 1)),
        ),
        round_seed,
        momentum=float(config.get("local-momentum", 0.0)),
    )
    metrics = MetricRecord(
        {"train-loss": loss, "num-examples": len(labels), "train-seconds": time.perf_counter() - started}
    )
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def resident_memory_mb() -> float:
    """This process's resident memory in MB now (nan where /proc is not there)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return float("nan")


def server_strategy(cfg: ExperimentConfig) -> FedAvg:
    """The inner strategy: FedAvg, or a server optimiser on the averaged update (FedAvgM, FedAdam)."""
    common = {
        "fraction_train": cfg.server.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.server.min_clients,
        "min_available_nodes": cfg.server.min_clients,
    }
    server = cfg.server
    if server.optimizer == "fedavgm":
        lr = {"server_learning_rate": server.lr} if server.lr else {}
        return FedAvgM(**common, server_momentum=server.momentum, **lr)
    if server.optimizer == "fedadam":
        return FedAdam(**common, **({"eta": server.lr} if server.lr else {}))
    return FedAvg(**common)


class _TimedStrategy(FedZipStrategy):
    """FedZipStrategy that notes when a round's phases end (for the per-round profile)."""

    marks: ClassVar[dict[str, float]] = {}  # declared here so that writes stay on the wrapper

    def configure_train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        messages = super().configure_train(*args, **kwargs)
        self.marks = {"sent": time.perf_counter()}
        return messages

    def aggregate_train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.marks["replies"] = time.perf_counter()
        try:
            arrays, metrics = super().aggregate_train(*args, **kwargs)
            if metrics is not None and "train-seconds" in metrics:
                self.marks["client"] = float(metrics["train-seconds"])  # mean over the replies
            return arrays, metrics
        finally:
            self.marks["aggregated"] = time.perf_counter()


class PatientGrid:
    """A Grid that gives up waiting for nodes.

    Flower's strategies wait for ``min_available_nodes`` without a limit; after
    ``seconds`` with fewer than ``minimum`` nodes connected this raises instead,
    so a run whose nodes died ends (with every finished round written).
    """

    def __init__(self, grid: Grid, minimum: int, seconds: float) -> None:
        self._grid, self._minimum, self._seconds = grid, minimum, seconds
        self._short_since: float | None = None

    def get_node_ids(self) -> list[int]:
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self._minimum:
            self._short_since = None
        elif self._short_since is None:
            self._short_since = time.monotonic()
        elif time.monotonic() - self._short_since > self._seconds:
            raise RuntimeError(
                f"only {len(nodes)} node(s) connected for {self._seconds:.0f} s, fewer than "
                f"min_clients={self._minimum}; stopping the run"
            )
        return nodes

    def wait_for(self, count: int) -> int:
        """Wait up to ``seconds`` for ``count`` nodes; the number connected."""
        deadline = time.monotonic() + self._seconds
        while len(nodes := list(self._grid.get_node_ids())) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        return len(nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def serve(
    grid: Grid,
    cfg: ExperimentConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
    out: Path | None = None,
) -> list[RoundRecord]:
    """Run the experiment's rounds from the server side; evaluation is central.

    With ``out``, metrics.csv and summary.json are rewritten after every round,
    so a run that stops early keeps what it finished.
    """
    started = time.perf_counter()
    patient = PatientGrid(grid, cfg.server.min_clients, cfg.server.node_wait)
    connected = patient.wait_for(cfg.server.clients)
    if connected < cfg.server.clients:
        log(
            WARNING,
            "%d of %d nodes connected after %.0f s; going on",
            connected,
            cfg.server.clients,
            cfg.server.node_wait,
        )
    data = cfg.data
    split = datamod.split_for(
        data.data_dir or None, data.validation, data.train_limit, data.test_limit, cfg.seed
    )
    test_x, test_y = (
        training.to_tensor(split.train_test.test_images),
        torch.from_numpy(split.train_test.test_labels),
    )
    val_x, val_y = training.to_tensor(split.val_images), torch.from_numpy(split.val_labels)
    model = training.fast_layout(models.build(cfg.model, split.classes, cfg.seed))
    transcoded: dict[str, int] = dict.fromkeys(TRANSCODED, 0)
    # what a keyed payload leaves out: the model's tensors (integer buffers included)
    layout = {k: v.numpy() for k, v in model.state_dict().items()}

    def measure_encodings(server_round: int, payload: bytes) -> None:
        for encoding in TRANSCODED:
            transcoded[encoding] += len(transcode(payload, encoding, layout=layout))

    strategy = _TimedStrategy(
        server_strategy(cfg),
        compressor=cfg.upload,
        error_feedback=cfg.error_feedback.enabled,
        on_payload=measure_encodings if cfg.transcode and cfg.upload["id"] == "fedzip" else None,
        downlink=cfg.download,
        downlink_shared_start=cfg.server.shared_start,
        warmup=cfg.warmup.schedule(),
        server_memory=cfg.server.memory or None,
        keyed_uploads=False,  # the run's upload config as written: a plan says known_layout where it wants it
        **cfg.error_feedback.strategy_options(),
    )
    records: list[RoundRecord] = []
    clock = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluating = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict())
        record = RoundRecord(server_round, float("nan"), float("nan"))
        with training.torch_threads(1):  # see torch_threads: two threads wait on any busy core
            # The test split is only reported: every test_every rounds and in the last test_last.
            last = server_round > cfg.server.rounds - cfg.server.test_last
            if server_round % cfg.server.test_every == 0 or last:
                record.accuracy, record.loss = training.evaluate(model, test_x, test_y)
            if len(val_y):
                record.val_accuracy, record.val_loss = training.evaluate(model, val_x, val_y)
        record.eval_seconds = time.perf_counter() - evaluating
        record.memory_mb = resident_memory_mb()
        marks = strategy.marks
        if server_round > 0 and {"sent", "replies", "aggregated"} <= set(marks):
            record.train_seconds = marks["replies"] - marks["sent"]
            record.aggregate_seconds = marks["aggregated"] - marks["replies"]
            record.client_train_seconds = marks.get("client", float("nan"))
        if server_round > 0 and strategy.history:
            stats = strategy.history[-1]
            previous = records[-1].cumulative_uplink_bytes if records else 0
            record.clients = stats.replies
            record.accepted = stats.accepted
            record.failures = len(stats.failures)
            record.failure_reasons = " | ".join(stats.failures)
            record.uplink_bytes = stats.uplink_bytes
            record.raw_bytes = stats.raw_bytes
            record.ratio = stats.ratio
            record.cumulative_uplink_bytes = previous + stats.uplink_bytes
            record.payload_bytes = stats.payload_bytes
            record.downlink_bytes = stats.downlink_bytes
            record.downlink_raw_bytes = stats.downlink_raw_bytes
            record.sampled, record.first_visits, record.mean_gap = (
                stats.sampled,
                stats.first_visits,
                stats.mean_gap,
            )
            for name in ("dense_downloads", "chain_downloads", "patch_downloads", "returning_bytes"):
                setattr(record, name, getattr(stats, name))
            for encoding, size in transcoded.items():
                setattr(record, f"{encoding}_bytes", size)
        transcoded.update(dict.fromkeys(TRANSCODED, 0))
        now = time.perf_counter()
        record.seconds = now - clock[0]
        clock[0] = now
        records.append(record)
        if out is not None:
            write_results(out, cfg, records, time.perf_counter() - started, plot=False)
        if on_round:
            on_round(record)
        recent = records[-SILENT_ROUNDS:]
        if len(recent) == SILENT_ROUNDS and recent[0].round > 0 and not any(r.clients for r in recent):
            # An engine whose workers died (or a federation whose every node left) answers nothing, and
            # each round would wait round_timeout for it: stop, with what was finished written.
            raise RuntimeError(
                f"no node replied in rounds {recent[0].round}-{server_round}: every node is gone or the "
                "engine failed (see its log); the finished rounds are written"
            )
        metrics = {"accuracy": record.accuracy, "loss": record.loss}
        if len(val_y):
            metrics |= {"val-accuracy": record.val_accuracy, "val-loss": record.val_loss}
        return MetricRecord(metrics)

    # Bytes per node and per direction (traffic.csv/json beside metrics.csv); its totals are RoundStats'.
    TrafficTracker(strategy, link=cfg.link, out=out).start(
        grid=patient,
        timeout=cfg.server.round_timeout,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.server.rounds,
        train_config=ConfigRecord(client_settings(cfg)),
        evaluate_fn=evaluate,
    )
    return records


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """Deployment entry point: settings from the run config, results to ``out``."""
    cfg = from_run_config(context.run_config)
    started = time.perf_counter()
    records = serve(grid, cfg, out=Path(cfg.out))
    write_results(Path(cfg.out), cfg, records, time.perf_counter() - started)
