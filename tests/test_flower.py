"""The mod and the strategy wrapper, exchanging real Flower messages without an engine."""

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedzip
from fedzip.flower import FedZipStrategy, fedzip_mod, protocol


@pytest.fixture(autouse=True)
def task_identity():
    """Outside an engine, Flower needs to be told which run and node it is."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def global_model(rng):
    return {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}


def to_record(arrays):
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def make_client(delta, examples):
    """A ClientApp train function that adds ``delta`` to what it receives."""

    def app(msg, context):
        received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        assert protocol.SETTINGS not in msg.content  # the mod hides its settings from the app
        trained = {k: received[k] + delta[k] for k in received}
        content = RecordDict(
            {"arrays": to_record(trained), "metrics": MetricRecord({"num-examples": examples})}
        )
        return Message(content, reply_to=msg)

    return app


def context(node_id):
    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def run_round(strategy, model, clients, contexts, corrupt=()):
    messages = list(
        strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid(list(range(len(clients)))))
    )
    replies = []
    for i, (msg, app) in enumerate(zip(messages, clients, strict=True)):
        # each node gets its own copy of the message, as over the wire
        msg = Message(
            RecordDict(dict(msg.content.items())), dst_node_id=i, message_type=msg.metadata.message_type
        )
        reply = fedzip_mod(msg, contexts[i], app)
        if i in corrupt:
            record = reply.content.config_records[protocol.PAYLOAD]
            record["payload"] = record["payload"][:-5] + b"oops!"
        replies.append(reply)
    return replies


def test_round_trip_through_mod_and_strategy(rng):
    model = global_model(rng)
    deltas = [
        {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()} for _ in range(2)
    ]
    codec = fedzip.FedZip(keep=0.1, clusters=4)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2, min_train_nodes=1), compressor=codec)
    replies = run_round(
        strategy,
        model,
        [make_client(d, n) for d, n in zip(deltas, (100, 300), strict=True)],
        [context(0), context(1)],
    )

    for reply in replies:
        assert protocol.PAYLOAD in reply.content.config_records and not reply.content.array_records
    carried = sum(r.count_bytes() for r in replies[0].content.values())
    assert carried * 10 < to_record(model).count_bytes()

    arrays, _ = strategy.aggregate_train(1, replies)
    expected = {
        k: model[k] + 0.25 * codec.approximate(deltas[0])[k] + 0.75 * codec.approximate(deltas[1])[k]
        for k in model
    }
    for k in model:
        np.testing.assert_allclose(arrays[k].numpy(), expected[k], rtol=1e-5, atol=1e-6)
    stats = strategy.history[-1]
    assert stats.accepted == 2 and not stats.failures and stats.ratio > 10


def test_a_corrupted_reply_is_rejected_and_the_round_goes_on(rng):
    model = global_model(rng)
    delta = {k: np.ones_like(v) for k, v in model.items()}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=3, min_train_nodes=1), compressor=fedzip.FedZip(keep=1.0, clusters=1)
    )
    clients = [make_client(delta, 10) for _ in range(3)]
    replies = run_round(strategy, model, clients, [context(i) for i in range(3)], corrupt={1})
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), model["w"] + 1, rtol=1e-6)
    stats = strategy.history[-1]
    assert stats.accepted == 2 and len(stats.failures) == 1 and "checksum" in stats.failures[0]


def test_a_reply_that_does_not_match_the_model_is_rejected(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor="none")
    (message,) = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0]))
    wrong = fedzip.NoCompression().encode({"w": np.zeros((3, 3), np.float32), "b": np.zeros(32, np.float32)})
    content = RecordDict(
        {
            protocol.PAYLOAD: ConfigRecord({"payload": wrong, "array-record": "arrays"}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    arrays, _ = strategy.aggregate_train(1, [Message(content, reply_to=message)])
    assert arrays is None
    assert "shape" in strategy.history[-1].failures[0]


def test_error_feedback_state_lives_in_the_context(rng):
    model = global_model(rng)
    delta = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.05),
        error_feedback=True,
    )
    ctx = context(0)
    run_round(strategy, model, [make_client(delta, 1)], [ctx])
    residual = protocol.from_record(ctx.state.array_records[protocol.RESIDUAL])
    sent = fedzip.FedZip(keep=0.05).approximate(delta)
    np.testing.assert_allclose(residual["w"], delta["w"] - sent["w"], atol=1e-6)


def test_other_messages_pass_through(rng):
    msg = Message(
        RecordDict({"arrays": to_record(global_model(rng))}), dst_node_id=0, message_type="evaluate"
    )
    called = []
    fedzip_mod(msg, context(0), lambda m, c: called.append(m) or m)
    assert called == [msg]


@pytest.mark.parametrize(
    "config",
    [
        {"id": "fp16"},
        {"id": "topk", "keep": 0.05},
        {"id": "qsgd", "levels": 8, "seed": 4},
        {"id": "signsgd"},
        {"id": "stc", "keep": 0.05},
    ],
)
def test_baselines_travel_through_mod_and_strategy(rng, config):
    model = global_model(rng)
    delta = {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()}
    seen = []
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=config,
        error_feedback=True,
        on_payload=lambda rnd, payload: seen.append((rnd, payload)),
    )
    ctx = context(0)
    replies = run_round(strategy, model, [make_client(delta, 10)], [ctx])
    arrays, _ = strategy.aggregate_train(1, replies)
    ((rnd, payload),) = seen
    sent = fedzip.decode(payload)
    for k in model:
        np.testing.assert_allclose(arrays[k].numpy(), model[k] + sent[k], rtol=1e-6, atol=1e-7)
        # error feedback: what was not sent waits in the node's state
        residual = ctx.state.array_records[protocol.RESIDUAL][k].numpy()
        np.testing.assert_allclose(residual, delta[k] - sent[k], atol=1e-6)
    stats = strategy.history[-1]
    assert rnd == 1 and stats.accepted == 1 and stats.payload_bytes == len(payload)
