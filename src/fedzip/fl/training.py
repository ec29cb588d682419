"""Local training and evaluation loops, laid out for speed on CPUs.

Measured on 2 cores (docs/benchmarks.md): convolutions in channels-last
layout, multi-tensor SGD (``foreach``) and evaluation in small batches under
``inference_mode`` keep the paper's setting (batch 10, plain SGD) and make a
round several times cheaper than the straightforward loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

EVAL_BATCH = 50  # small batches stay in cache: 4.7x faster than 1000 for the paper CNN
LR_SCHEDULES = ("constant", "cosine")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` inside the block, restored after.

    The server evaluates on one thread: with two, evaluation waited on a core held by any other
    process and took 27-55 s instead of 1.0-1.5 s for 5,000 images (ViT, residual CNN; 2 cores,
    an experiment beside it); on an idle machine two threads save ~0.3 s a round.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def round_lr(lr: float, schedule: str, final: float, server_round: int, rounds: int) -> float:
    """The clients' learning rate in ``server_round`` (1..rounds) of a run of ``rounds``.

    ``"constant"``: ``lr`` throughout. ``"cosine"``: half a cosine from ``lr`` in round 1
    to ``final`` in the last round (Loshchilov & Hutter 2017, without restarts).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if schedule == "constant" or rounds <= 1:
        return lr
    progress = min(max(server_round - 1, 0), rounds - 1) / (rounds - 1)
    return final + (lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) images as normalised float (n, 1, 28, 28)."""
    return (torch.from_numpy(images.astype(np.float32)) / 255.0 - 0.5).unsqueeze(1) / 0.5


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def fast_layout(model: nn.Module) -> nn.Module:
    """Channels-last weights for convolutional models (in place); others are left as they are."""
    if _has_conv(model):
        model.to(memory_format=torch.channels_last)
    return model


def _tensors(
    images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = images if isinstance(images, torch.Tensor) else to_tensor(images)
    y = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(labels)
    return x, y


def _batch(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """A batch in the layout the model's weights have (channels-last for convolutions)."""
    return x.contiguous(memory_format=torch.channels_last) if conv else x


def train(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    seed: int,
    momentum: float = 0.0,
) -> float:
    """Train in place; returns the mean loss of the last epoch.

    ``images`` may be uint8 images or a tensor from :func:`to_tensor`; the
    order of examples and dropout are seeded by ``seed``.
    """
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, foreach=True)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    )
    x, y = _tensors(images, labels)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    conv = _has_conv(model)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(_batch(x[batch], conv)), y[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            count += len(batch)
        last = total / max(count, 1)
    return last


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    batch_size: int = EVAL_BATCH,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) on the given examples."""
    model.eval()
    x, y = _tensors(images, labels)
    conv = _has_conv(model)  # once, not per batch
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch_size):
        out = model(_batch(x[start : start + batch_size], conv))
        target = y[start : start + batch_size]
        loss += float(loss_fn(out, target))
        correct += int((out.argmax(1) == target).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)
