"""The in-process setting the probes share: converge-iid (paper CNN, 10 IID clients, seed 0), no Flower."""

from __future__ import annotations

import numpy as np
import torch

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

    def update(self, weights: dict[str, np.ndarray], server_round: int, client: int) -> dict[str, np.ndarray]:
        """One epoch of ``client``'s local training from ``weights`` (SGD lr 0.05, batch 10): trained - weights."""
        self.load(weights)
        training.train(
            self.model,
            self.images[client],
            self.labels[client],
            1,
            10,
            "sgd",
            0.05,
            server_round * 1009 + client,
        )
        return {k: v.detach().numpy() - weights[k] for k, v in self.model.state_dict().items()}
