"""Local training and evaluation loops."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) images as normalised float (n, 1, 28, 28)."""
    return (torch.from_numpy(images.astype(np.float32)) / 255.0 - 0.5).unsqueeze(1) / 0.5


def train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    seed: int,
) -> float:
    """Train in place; returns the mean loss of the last epoch."""
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    x, y = to_tensor(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            count += len(batch)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) on the given examples."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    correct, loss = 0, 0.0
    for start in range(0, len(labels), batch_size):
        x = to_tensor(images[start : start + batch_size])
        y = torch.from_numpy(labels[start : start + batch_size])
        out = model(x)
        loss += float(loss_fn(out, y))
        correct += int((out.argmax(1) == y).sum())
    return correct / max(len(labels), 1), loss / max(len(labels), 1)
