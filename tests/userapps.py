"""Flower apps shaped like users' own, to run fedzip inside them.

Four models with what trips up a codec in the wild: BatchNorm (float running
stats, a 0-d int64 counter), a 0-d float parameter, an embedding with
LayerNorm and integer buffers, and a float64 numpy model trained the way a
scikit-learn-style app would. One ClientApp serves all four; the train
message's config names the model (``"app"``). Everything is seeded by the
node's partition and the round, so two runs that send the same weights get
the same replies.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedzip.flower import fedzip_mod

APPS = ("bn_cnn", "scalar", "embedding", "numpy_lr")
CLASSES = 3
EXAMPLES = 48


class BatchNormCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Linear(4 * 4 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ScaledLinear(torch.nn.Module):
    """Logits divided by a learned 0-d temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, CLASSES)
        self.temperature = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) / self.temperature


class TinyEmbedding(torch.nn.Module):
    """Embedding + LayerNorm with the integer buffers transformer code keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, CLASSES)
        self.register_buffer("position_ids", torch.arange(6))  # int64, 1-d
        self.register_buffer("steps", torch.tensor(0))  # int64, 0-d

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        hidden = self.norm(self.embed(tokens) + 0.01 * self.position_ids[None, :, None])
        return self.head(hidden.mean(1))


MODELS = {"bn_cnn": BatchNormCNN, "scalar": ScaledLinear, "embedding": TinyEmbedding}


def data(app: str, partition: int, n: int = EXAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """A partition's examples, labelled by a fixed random teacher so there is something to learn."""
    rng = np.random.default_rng(1000 + partition)
    teacher = np.random.default_rng(7)
    if app == "bn_cnn":
        x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
        y = (x.reshape(n, -1) @ teacher.standard_normal((64, CLASSES))).argmax(1)
    elif app == "embedding":
        x = rng.integers(0, 50, (n, 6))
        y = teacher.integers(0, CLASSES, 50)[x[:, 0]]
    else:
        x = rng.standard_normal((n, 16)).astype(np.float32 if app == "scalar" else np.float64)
        y = (x @ teacher.standard_normal((16, CLASSES))).argmax(1)
    return x, y


def initial_arrays(app: str, seed: int = 0) -> ArrayRecord:
    if app == "numpy_lr":
        rng = np.random.default_rng(seed)
        weights = {"coef": rng.normal(0, 0.1, (CLASSES, 16)), "intercept": np.zeros(CLASSES)}  # float64
        return ArrayRecord({k: Array(v) for k, v in weights.items()})
    torch.manual_seed(seed)
    return ArrayRecord(MODELS[app]().state_dict())


def _softmax_step(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> float:
    logits = x @ weights["coef"].T + weights["intercept"]
    logits -= logits.max(1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(1, keepdims=True)
    loss = float(-np.log(prob[np.arange(len(y)), y]).mean())
    prob[np.arange(len(y)), y] -= 1
    weights["coef"] -= lr * prob.T @ x / len(y)
    weights["intercept"] -= lr * prob.mean(0)
    return loss


def local_train(
    app: str, arrays: ArrayRecord, partition: int, server_round: int
) -> tuple[ArrayRecord, float]:
    """Two mini-batches of SGD from the received weights."""
    x, y = data(app, partition)
    if app == "numpy_lr":
        weights = {k: a.numpy().copy() for k, a in arrays.items()}
        loss = sum(_softmax_step(weights, x[i::2], y[i::2], 0.5) for i in range(2)) / 2
        return ArrayRecord({k: Array(v) for k, v in weights.items()}), loss
    torch.manual_seed(partition * 1000 + server_round)
    torch.set_num_threads(1)
    model = MODELS[app]()
    model.load_state_dict(arrays.to_torch_state_dict())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    losses = []
    for i in range(2):
        xb, yb = torch.as_tensor(x[i::2]), torch.as_tensor(y[i::2])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return ArrayRecord(model.state_dict()), float(np.mean(losses))


def accuracy(app: str, arrays: ArrayRecord, partitions: range) -> float:
    """Accuracy of ``arrays`` on the union of the partitions' data."""
    hits = total = 0
    for partition in partitions:
        x, y = data(app, partition)
        if app == "numpy_lr":
            weights = {k: a.numpy() for k, a in arrays.items()}
            predicted = (x @ weights["coef"].T + weights["intercept"]).argmax(1)
        else:
            model = MODELS[app]()
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            with torch.no_grad():
                predicted = model(torch.as_tensor(x)).argmax(1).numpy()
        hits += int((predicted == y).sum())
        total += len(y)
    return hits / total


def make_client_app(mods: list | None = None) -> ClientApp:
    """A ClientApp as users write one: train returns its weights and metrics."""
    app = ClientApp(mods=[fedzip_mod] if mods is None else mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        (record,) = msg.content.array_records.values()
        (config,) = msg.content.config_records.values()
        partition = int(context.node_config["partition-id"])
        trained, loss = local_train(str(config["app"]), record, partition, int(config["server-round"]))
        metrics = MetricRecord({"num-examples": EXAMPLES, "train_loss": loss})
        return Message(RecordDict({"arrays": trained, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        (record,) = msg.content.array_records.values()
        (config,) = msg.content.config_records.values()
        acc = accuracy(
            str(config["app"]),
            record,
            range(int(context.node_config["partition-id"]), 1 + int(context.node_config["partition-id"])),
        )
        metrics = MetricRecord({"num-examples": EXAMPLES, "accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app
