"""The mod and the strategy wrapper, exchanging real Flower messages without an engine."""

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

import fedzip
from fedzip.flower import ConfigurationError, FedZipStrategy, fedzip_mod, protocol


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


def make_client(delta, examples, behind_mod=True):
    """A ClientApp train function that adds ``delta`` to what it receives."""

    def app(msg, context):
        received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        if behind_mod:  # the mod hides its settings from the app
            assert all(protocol.CODEC_KEY not in c for c in msg.content.config_records.values())
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
            payload = protocol.payload_bytes(reply.content.array_records[protocol.PAYLOAD])
            reply.content[protocol.PAYLOAD] = protocol.payload_record(payload[:-5] + b"oops!")
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
        assert list(reply.content.array_records) == [protocol.PAYLOAD]
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


def reply_with(message, payload, examples=1, passthrough=None):
    content = RecordDict({protocol.PAYLOAD: protocol.payload_record(payload)})
    if passthrough:
        content[protocol.PASSTHROUGH] = to_record(passthrough)
    content["metrics"] = MetricRecord({"num-examples": examples})
    return Message(content, reply_to=message)


def test_a_reply_that_does_not_match_the_model_is_rejected_and_the_round_goes_on(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2, min_train_nodes=2), compressor="none")
    first, second = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0, 1]))
    wrong = fedzip.NoCompression().encode({"w": np.zeros((3, 3), np.float32), "b": np.zeros(32, np.float32)})
    right = fedzip.NoCompression().encode({k: np.ones_like(v) for k, v in model.items()})
    arrays, _ = strategy.aggregate_train(1, [reply_with(first, wrong), reply_with(second, right)])
    np.testing.assert_allclose(arrays["w"].numpy(), model["w"] + 1)
    stats = strategy.history[-1]
    assert stats.accepted == 1 and stats.aggregated and "shape (3, 3)" in stats.failures[0]


def test_a_round_where_every_reply_is_misconfigured_stops_the_run(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor="none")
    (message,) = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0]))
    wrong = fedzip.NoCompression().encode({"w": np.zeros((3, 3), np.float32), "b": np.zeros(32, np.float32)})
    with pytest.raises(ConfigurationError, match=r"shape \(3, 3\)"):
        strategy.aggregate_train(1, [reply_with(message, wrong)])


@pytest.mark.parametrize(
    ("client_codec", "server_codec", "expected"),
    [
        ("stc", "none", "another codec"),
        (fedzip.FedZip(encoding="position"), fedzip.FedZip(encoding="dap"), "another codec"),
    ],
)
def test_a_payload_of_another_codec_is_a_configuration_error(rng, client_codec, server_codec, expected):
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=server_codec)
    (message,) = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0]))
    client = (
        client_codec if isinstance(client_codec, fedzip.Compressor) else fedzip.get_compressor(client_codec)
    )
    payload = client.encode({k: np.ones_like(v) for k, v in model.items()})
    with pytest.raises(ConfigurationError, match=expected):
        strategy.aggregate_train(1, [reply_with(message, payload)])


def test_weights_without_a_payload_name_the_missing_mod(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2, min_train_nodes=2))
    messages = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0, 1]))
    replies = [
        make_client(model, 5, behind_mod=False)(Message(m.content, dst_node_id=i, message_type="train"), None)
        for i, m in enumerate(messages)
    ]
    with pytest.raises(ConfigurationError, match=r"add fedzip_mod to the ClientApp"):
        strategy.aggregate_train(1, replies)


def test_transient_failures_are_counted_not_fatal_and_reach_the_inner_strategy(rng):
    model = global_model(rng)
    inner = FedAvg(min_available_nodes=3, min_train_nodes=3)
    seen = []
    original = inner.aggregate_train
    inner.aggregate_train = lambda rnd, replies: seen.extend(replies) or original(rnd, replies)
    strategy = FedZipStrategy(inner, compressor="none")
    messages = list(strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0, 1, 2])))
    dropped = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node went away"), reply_to=messages[0])
    corrupt = reply_with(messages[1], b"FZIP garbage")
    good = reply_with(
        messages[2], fedzip.NoCompression().encode({k: np.ones_like(v) for k, v in model.items()})
    )
    arrays, _ = strategy.aggregate_train(1, [dropped, corrupt, good])
    np.testing.assert_allclose(arrays["b"].numpy(), 1.0)
    assert [m.has_error() for m in seen] == [True, True, False]  # the inner strategy counts 2 failures
    stats = strategy.history[-1]
    assert (stats.replies, stats.accepted, len(stats.failures)) == (3, 1, 2)
    # every reply lost to transient faults: counted, model unchanged, no exception
    messages = list(strategy.configure_train(2, arrays, ConfigRecord({}), FakeGrid([0, 1, 2])))
    lost = [Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="gone"), reply_to=m) for m in messages]
    assert strategy.aggregate_train(2, lost) == (None, None)


def test_min_accepted_leaves_the_model_unchanged(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=2, min_train_nodes=2), compressor="none", min_accepted=2
    )
    first, second = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0, 1]))
    good = fedzip.NoCompression().encode({k: np.ones_like(v) for k, v in model.items()})
    assert strategy.aggregate_train(1, [reply_with(first, good), reply_with(second, b"bad")]) == (None, None)
    assert not strategy.history[-1].aggregated
    with pytest.raises(ValueError, match="min_accepted"):
        FedZipStrategy(FedAvg(), min_accepted=0)


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
