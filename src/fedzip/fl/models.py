"""Models: the FedZip paper's CNN and a small MLP, in PyTorch."""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("cnn", "mlp")


class PaperCNN(nn.Module):
    """Conv(32,3x3) → Conv(64,3x3) → MaxPool(2) → Dropout(.25) → Dense(128) → Dropout(.3) → Dense(10).

    1,199,882 parameters on 28x28x1 inputs, as in the FedZip paper's code.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """784 → 128 → classes, for fast runs."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build(name: str, classes: int = 10, seed: int = 0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return PaperCNN(classes) if name == "cnn" else MLP(classes)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
