"""`fedzip bench --fl`: how close a simulated round comes to the clients' bare training time.

The reference is measured in the same run: the same clients' local training
done back to back in this process, with 1 and with 2 torch threads (the
better one counts). The simulated round is a short run on Flower's simulation
engine with the same configuration; its rounds after the first are timed
phase by phase (clients' work and messaging, aggregation, evaluation). Two more
short runs give the messaging floor: every client holding a single batch, once
with the same codec and once as FedAvg, so Flower's own cost per round can be
set against the headroom a 1.25x round leaves.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import models, training
from .config import ExperimentConfig


@dataclass
class SpeedRow:
    model: str
    clients: int
    train_images: int
    reference_1_thread: float  # seconds: every client's local training back to back, 1 torch thread
    reference_2_threads: float
    round_seconds: float  # median simulated round, evaluation included
    round_without_eval: float  # the same without central evaluation
    train_phase: float  # train messages out to the last reply in
    aggregate: float  # checking, decoding, averaging
    evaluation: float  # validation every round, test every test_every rounds (mean)
    client_training: float  # mean local training time of one client inside the simulation
    round_flower_polling: float  # the same round with the engine's own 0.1 s polling intervals
    # Train phase when every client trains one batch: the cost of the messages themselves,
    # with fedzip's mod and checks, and for FedAvg (float32 replies): Flower's alone.
    messaging_floor: float
    messaging_floor_plain: float

    @property
    def reference(self) -> float:
        return min(self.reference_1_thread, self.reference_2_threads)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "reference": self.reference,
            "ratio": self.round_seconds / self.reference,
            "ratio_without_eval": self.round_without_eval / self.reference,
            "rounds_per_minute": 60 / self.round_seconds,
            # Time a round may spend beyond bare training at 1.25x; a floor above it cannot meet 1.25x.
            "headroom_at_1_25x": 0.25 * self.reference,
        }


def local_training_seconds(cfg: ExperimentConfig, threads: int) -> float:
    """Every client's local training of one round, back to back in this process."""
    from .apps import client_examples

    data, local = cfg.data, cfg.training
    clients = [
        client_examples(
            data.data_dir, data.validation, data.train_limit, cfg.seed, data.partition, cfg.server.clients, i
        )
        for i in range(cfg.server.clients)
    ]
    with training.torch_threads(threads):
        model = training.fast_layout(models.build(cfg.model, clients[0][2], cfg.seed))
        start_state = {k: v.clone() for k, v in model.state_dict().items()}

        def one_round() -> None:
            for index, (x, y, _) in enumerate(clients):
                model.load_state_dict(start_state)
                training.train(
                    model, x, y, local.local_epochs, local.batch_size, local.optimizer, local.lr, index
                )

        one_round()  # warm-up, as the simulation's first round
        started = time.perf_counter()
        one_round()
        return time.perf_counter() - started


def measure(cfg: ExperimentConfig, rounds: int = 6, show_progress: bool = False) -> SpeedRow:
    """Reference and simulated round for ``cfg`` (its rounds and output folder are replaced)."""
    from .report import read_metrics
    from .runner import run_experiment

    one = local_training_seconds(cfg, 1)
    two = local_training_seconds(cfg, 2)

    def simulated(fast_poll: bool, run_cfg: ExperimentConfig = cfg) -> list[dict[str, float]]:
        with tempfile.TemporaryDirectory() as folder:
            run_experiment(run_cfg.replace(server={"rounds": rounds}, out=folder), show_progress, fast_poll)
            return [r for r in read_metrics(Path(folder)) if r["round"] >= 2]  # round 1 warms up the workers

    def round_seconds(rows: list[dict[str, float]]) -> float:
        return statistics.median(
            r["train_seconds"] + r["aggregate_seconds"] + r["eval_seconds"] for r in rows
        )

    rows = simulated(True)
    flower_polling = round_seconds(simulated(False))
    # Same model, codec and messages, but each client holds one batch: what is left of the
    # train phase is the cost of moving, encoding and checking messages. IID so no client is empty.
    batch = cfg.training.batch_size
    floor_cfg = cfg.replace(
        data={
            "partition": "iid",
            "train_limit": cfg.server.clients * batch,
            "validation": batch,
            "test_limit": batch,
        }
    )
    floor = statistics.median(r["train_seconds"] for r in simulated(True, floor_cfg))
    plain = floor_cfg.replace(upload={"id": "none"}, error_feedback={"enabled": False})
    floor_plain = statistics.median(r["train_seconds"] for r in simulated(True, plain))
    eval_mean = statistics.fmean(r["eval_seconds"] for r in rows)
    train = statistics.median(r["train_seconds"] for r in rows)
    aggregate = statistics.median(r["aggregate_seconds"] for r in rows)
    return SpeedRow(
        cfg.model,
        cfg.server.clients,
        cfg.data.train_limit or 60000 - cfg.data.validation,
        one,
        two,
        train + aggregate + eval_mean,
        train + aggregate,
        train,
        aggregate,
        eval_mean,
        statistics.median(r["client_train_seconds"] for r in rows),
        flower_polling,
        floor,
        floor_plain,
    )
