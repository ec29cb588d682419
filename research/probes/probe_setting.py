"""The in-process setting the probes share: converge-iid (paper CNN, 10 IID clients, seed 0), no Flower."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fedzip.abc import Compressor
from fedzip.feedback import ErrorFeedback
from fedzip.fl import data as datamod
from fedzip.fl import models, training

CLIENTS = 10


class Setting:
    """Clients' shares, the validation split and one model to train and evaluate on."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        split = datamod.split_for(None, 5000, 12000, 0, 0)
        dataset = split.train_test
        shares = datamod.partition_indices(dataset.train_labels.tobytes(), "iid", CLIENTS, 0)
        self.images = [training.to_tensor(dataset.train_images[s]) for s in shares]
        self.labels = [torch.from_numpy(dataset.train_labels[s]) for s in shares]
        self.val = training.to_tensor(split.val_images), torch.from_numpy(split.val_labels)
        self.model = training.fast_layout(models.build("cnn", dataset.classes, 0))
        self.start = {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def load(self, weights: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})

    def accuracy(self, weights: dict[str, np.ndarray]) -> float:
        """Validation accuracy of ``weights``."""
        self.load(weights)
        return training.evaluate(self.model, *self.val)[0]

    def update(
        self, weights: dict[str, np.ndarray], server_round: int, client: int, lr: float = 0.05
    ) -> dict[str, np.ndarray]:
        """One epoch of ``client``'s local training from ``weights`` (SGD, batch 10): trained - weights."""
        self.load(weights)
        training.train(
            self.model,
            self.images[client],
            self.labels[client],
            1,
            10,
            "sgd",
            lr,
            server_round * 1009 + client,
        )
        return {k: v.detach().numpy() - weights[k] for k, v in self.model.state_dict().items()}


def error_feedback_rounds(
    setting: Setting,
    codec: Compressor,
    rounds: int,
    lr: float = 0.05,
    schedule: str = "constant",
    lr_final: float = 0.0,
) -> Iterator[tuple[int, dict[str, np.ndarray], list[ErrorFeedback], list[int]]]:
    """Classic error feedback (Seide et al. 2014) in process, round by round.

    The clients' learning rate follows ``schedule`` (``training.round_lr``) over ``rounds``.
    Yields the round, the model the server holds after it, the clients' senders (their residuals)
    and every upload's size so far.
    """
    senders = [ErrorFeedback(codec) for _ in range(CLIENTS)]
    weights, sizes = dict(setting.start), []
    for server_round in range(1, rounds + 1):
        total = {k: np.zeros_like(v) for k, v in weights.items()}
        round_lr = training.round_lr(lr, schedule, lr_final, server_round, rounds)
        for client, sender in enumerate(senders):
            payload = sender.encode(setting.update(weights, server_round, client, round_lr))
            sizes.append(len(payload))
            for k, v in codec.decode(payload).items():
                total[k] += v
        weights = {k: v + total[k] / CLIENTS for k, v in weights.items()}
        yield server_round, weights, senders, sizes


class Rows:
    """A CSV written row by row, flushed and echoed, so a long probe can be read while it runs."""

    def __init__(self, path: str, header: list[str], every: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.every = every
        self._handle = open(self.path, "w", newline="")  # noqa: SIM115 - open for the probe's life
        self._writer = csv.writer(self._handle)
        self._writer.writerow(header)

    def due(self, server_round: int) -> bool:
        """Whether a row is due after this round: round 1 and every ``every`` rounds."""
        return server_round == 1 or server_round % self.every == 0

    def add(self, *row: object) -> None:
        self._writer.writerow(row)
        self._handle.flush()
        print(*row, flush=True)
