"""Hostile clients on Flower's simulation engine: one per fault, alongside honest ones.

Partitions 0-11 each misbehave in their own way (a client mod rewrites the
reply fedzip_mod produced); partitions 12-15 are honest. The run must finish,
reject every hostile reply with its reason, and end where the same rounds with
the honest clients alone end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ray")

import ray.cloudpickle
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import fedzip
import userapps
from fedzip import exact, wire
from fedzip.flower import FedZipStrategy, fedzip_mod, protocol
from test_flower_apps import simulate, start
from test_hostile import with_centroid

ray.cloudpickle.register_pickle_by_value(userapps)

HONEST = 4
FAULTS = [
    ("nan-in-a-raw-body", "another codec"),
    ("centroid-3.4e38", "norm"),
    ("weights-times-1e30", "norm"),
    ("integers-for-a-float-tensor", "made for another model"),  # keyed: the layout says the dtype
    ("extra-array-record", "unexpected records"),
    ("missing-num-examples", "'num-examples'"),
    ("extra-metric-key", "differ"),
    ("another-codec", "another codec"),
    ("decompression-bomb", "max_elements"),
    ("many-empty-tensors", "max_tensors"),
    ("garbage", "malformed"),
    ("crashing-client", "ClientApp"),
]


def hostile_mod(msg: Message, context: Context, call_next) -> Message:
    """Rewrites the reply of partition p < len(FAULTS) according to FAULTS[p]; listed before fedzip_mod."""
    partition = int(context.node_config["partition-id"])
    if int(context.node_config["num-partitions"]) == HONEST or partition >= len(FAULTS):
        return call_next(msg, context)
    fault = FAULTS[partition][0]
    config = next(iter(msg.content.config_records.values()))
    codec = fedzip.get_compressor(json.loads(config[protocol.CODEC_KEY]))
    # the global model: what a keyed payload leaves out
    (arrays,) = msg.content.array_records.values()
    layout = {k: a.numpy() for k, a in arrays.items()}
    if fault == "crashing-client":
        raise RuntimeError("the client crashed")
    reply = call_next(msg, context)
    content = reply.content
    payload = protocol.payload_bytes(content.array_records[protocol.PAYLOAD])
    update = fedzip.decode(payload, layout=layout)
    empty = np.zeros(0, np.float32)

    def set_payload(data: bytes) -> None:
        content[protocol.PAYLOAD] = protocol.payload_record(data)

    if fault == "nan-in-a-raw-body":
        records = [
            wire.Record(
                k, v.dtype, v.shape, 16, v.size, empty, 8 * v.nbytes, np.full_like(v, np.nan).tobytes()
            )
            if v.dtype.kind == "f"
            else exact.record(k, v)
            for k, v in update.items()
        ]
        set_payload(wire.write(records))
    elif fault == "centroid-3.4e38":
        set_payload(with_centroid(payload, 3.4e38, layout))
    elif fault == "weights-times-1e30":
        set_payload(codec.encode({k: v * 1e30 for k, v in update.items()}))
    elif fault == "integers-for-a-float-tensor":
        name = next(k for k, v in update.items() if v.dtype.kind == "f")
        set_payload(codec.encode({**update, name: np.full(update[name].shape, 7, np.int32)}))
    elif fault == "extra-array-record":
        content["more"] = ArrayRecord({"x": Array(np.ones(3))})
    elif fault in ("missing-num-examples", "extra-metric-key"):
        metrics = dict(next(iter(content.metric_records.values())))
        if fault == "missing-num-examples":
            del metrics["num-examples"]
        else:
            metrics["evil"] = 1.0
        content["metrics"] = MetricRecord(metrics)
    elif fault == "another-codec":
        set_payload(fedzip.get_compressor("stc").encode(update))
    elif fault == "decompression-bomb":
        set_payload(
            wire.write([wire.Record("linear.weight", np.dtype(np.float32), (10**10,), 3, 0, empty, 0, b"")])
        )
    elif fault == "many-empty-tensors":
        records = [
            wire.Record(f"t{i}", np.dtype(np.float32), (0,), 3, 0, empty, 0, b"") for i in range(10**5)
        ]
        set_payload(wire.write(records))
    elif fault == "garbage":
        set_payload(payload[:-9] + b"corrupted")
    return reply


def client_app() -> ClientApp:
    app = ClientApp(mods=[hostile_mod, fedzip_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        (record,) = msg.content.array_records.values()
        partition = int(context.node_config["partition-id"]) % HONEST  # honest nodes train alike in both runs
        trained, loss = userapps.local_train(
            "scalar", record, partition, int(msg.content["config"]["server-round"])
        )
        metrics = MetricRecord({"num-examples": userapps.EXAMPLES, "train_loss": loss})
        return Message(RecordDict({"arrays": trained, "metrics": metrics}), reply_to=msg)

    return app


def run(nodes: int) -> tuple[dict[str, np.ndarray], FedZipStrategy]:
    out = {}

    def main(grid: Grid) -> None:
        strategy = FedZipStrategy(
            FedAvg(fraction_evaluate=0.0, min_available_nodes=nodes, min_train_nodes=nodes),
            compressor=fedzip.FedZip(keep=0.5),
        )
        out["model"], out["strategy"] = start(grid, strategy, "scalar"), strategy

    simulate(client_app(), main, nodes=nodes)
    return out["model"], out["strategy"]


def test_hostile_clients_are_rejected_and_the_run_ends_where_the_honest_ones_lead():
    hostile_model, strategy = run(len(FAULTS) + HONEST)
    honest_model, honest = run(HONEST)
    assert [s.accepted for s in honest.history] == [HONEST, HONEST], [s.failures for s in honest.history]
    for stats in strategy.history:
        assert stats.replies == len(FAULTS) + HONEST and stats.accepted == HONEST and stats.aggregated
        assert len(stats.failures) == len(FAULTS)
        text = "\n".join(stats.failures)
        for fault, expected in FAULTS:
            assert expected in text, (fault, expected, stats.failures)
    for name, value in honest_model.items():
        assert np.all(np.isfinite(hostile_model[name]))
        np.testing.assert_allclose(hostile_model[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
