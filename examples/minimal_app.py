"""A minimal Flower app of your own with FedZip on the wire.

Any ClientApp that returns an ArrayRecord of weights works: add ``fedzip_mod``
to its mods and wrap the server strategy in ``FedZipStrategy``.

    python examples/minimal_app.py
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedzip import FedZip
from fedzip.flower import FedZipStrategy, fedzip_mod

TARGET = np.linspace(-1, 1, 10_000, dtype=np.float32).reshape(100, 100)

client = ClientApp(mods=[fedzip_mod])


@client.train()
def train(msg: Message, context: Context) -> Message:
    """One gradient step of ||w - target||^2 on a noisy copy of the target."""
    weights = msg.content["arrays"]["w"].numpy()
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    noisy_target = TARGET + rng.normal(0, 0.1, TARGET.shape).astype(np.float32)
    weights = weights - 0.5 * (weights - noisy_target)
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(weights)}), "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(content, reply_to=msg)


server = ServerApp()
strategy = FedZipStrategy(FedAvg(fraction_evaluate=0.0), compressor=FedZip(keep=0.05), error_feedback=True)


@server.main()
def main(grid: Grid, context: Context) -> None:
    result = strategy.start(grid, ArrayRecord({"w": Array(np.zeros_like(TARGET))}), num_rounds=5)
    error = np.abs(result.arrays["w"].numpy() - TARGET).mean()
    print(f"mean distance to the target after 5 rounds: {error:.4f}")
    for stats in strategy.history:
        print(
            f"round {stats.round}: {stats.uplink_bytes} uplink bytes, {stats.ratio:.0f}x smaller than float32"
        )


if __name__ == "__main__":
    run_simulation(server_app=server, client_app=client, num_supernodes=2)
