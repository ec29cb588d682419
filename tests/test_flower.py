"""The mod and the strategy wrapper, exchanging real Flower messages without an engine."""

import json
import random

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

import fedzip
from conftest import FakeGrid, delivered
from fedzip.flower import ConfigurationError, FedZipStrategy, fedzip_mod, protocol

pytestmark = pytest.mark.usefixtures("task_identity")


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
        trained = {k: np.asarray(received[k] + delta[k]) for k in received}
        content = RecordDict(
            {"arrays": to_record(trained), "metrics": MetricRecord({"num-examples": examples})}
        )
        return Message(content, reply_to=msg)

    return app


def context(node_id):
    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def run_round(strategy, model, clients, contexts, corrupt=(), server_round=1):
    grid = FakeGrid(list(range(len(clients))))
    messages = list(strategy.configure_train(server_round, to_record(model), ConfigRecord({}), grid))
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
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=2, min_train_nodes=1), compressor=fedzip.FedZip(keep=0.1, clusters=4)
    )
    codec = strategy.compressor
    assert codec == fedzip.FedZip(keep=0.1, clusters=4, known_layout=True)  # the server knows the model
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


def reply_with(message, payload, examples=1):
    content = RecordDict({protocol.PAYLOAD: protocol.payload_record(payload)})
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
    assert sorted(m.has_error() for m in seen) == [False, True, True]  # the inner strategy counts 2 failures
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
    sent = fedzip.FedZip(keep=0.05, known_layout=True).approximate(delta)  # keyed: the strategy's default
    np.testing.assert_allclose(residual["w"], delta["w"] - sent["w"], atol=1e-6)


def test_a_residual_knows_its_age_and_decays_or_is_dropped(rng):
    """A client sampled again after ``age`` rounds adds its residual scaled by age_decay ** (age - 1),
    or nothing once it is older than max_age: the round travels in the train message."""
    model = global_model(rng)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.05),
        error_feedback=True,
        age_decay=0.5,
        max_age=4,
    )
    codec = strategy.compressor
    ctx = context(0)

    def turn(server_round):
        delta = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
        before = protocol.from_record(ctx.state.array_records[protocol.RESIDUAL]) if server_round > 1 else {}
        run_round(strategy, model, [make_client(delta, 1)], [ctx], server_round=server_round)
        assert ctx.state.config_records[protocol.RESIDUAL_ROUND]["round"] == server_round
        return delta, before, protocol.from_record(ctx.state.array_records[protocol.RESIDUAL])

    turn(1)
    delta, before, after = turn(4)  # three rounds later: scaled by 0.5 ** 2
    carried = {k: delta[k] + 0.25 * before[k] for k in delta}
    np.testing.assert_allclose(after["w"], carried["w"] - codec.approximate(carried)["w"], atol=1e-5)
    delta, _, after = turn(9)  # five rounds later, past max_age: dropped
    np.testing.assert_allclose(after["w"], delta["w"] - codec.approximate(delta)["w"], atol=1e-6)
    with pytest.raises(ValueError, match="set error_feedback=True"):
        FedZipStrategy(FedAvg(), compressor=codec, max_age=3)


def test_step_ahead_clients_train_from_the_model_plus_part_of_their_residual(rng):
    """With step_ahead, the ClientApp receives the model plus that fraction of the node's residual;
    the upload is what it trained from there plus the whole residual, and what that leaves out is
    the next residual; an integer buffer is neither shifted nor compressed."""
    model = global_model(rng) | {"count": np.array(5, np.int64)}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.05),
        error_feedback=True,
        step_ahead=0.5,
    )
    codec = strategy.compressor
    ctx = context(0)
    floats = [k for k in model if k != "count"]

    def delta():
        return {k: rng.standard_normal(model[k].shape).astype(np.float32) for k in floats} | {
            "count": np.array(1, np.int64)
        }

    first = delta()
    run_round(strategy, model, [make_client(first, 1)], [ctx])
    residual = protocol.from_record(ctx.state.array_records[protocol.RESIDUAL])
    seen = []

    def app(msg, context):
        seen.append({k: a.numpy().copy() for k, a in msg.content["arrays"].items()})
        return make_client(second, 1)(msg, context)

    second = delta()
    (reply,) = run_round(strategy, model, [app], [ctx], server_round=2)
    assert set(residual) == set(floats) and seen[0]["count"] == 5
    for k in floats:
        np.testing.assert_allclose(seen[0][k], model[k] + 0.5 * residual[k], atol=1e-6)
    sent = fedzip.decode(protocol.payload_bytes(reply.content.array_records[protocol.PAYLOAD]), layout=model)
    assert sent["count"] == 1
    carried = {k: second[k] + residual[k] for k in floats}
    expected = codec.approximate(carried)
    after = protocol.from_record(ctx.state.array_records[protocol.RESIDUAL])
    for k in floats:
        np.testing.assert_allclose(sent[k], expected[k], atol=1e-5)
        np.testing.assert_allclose(after[k], carried[k] - sent[k], atol=1e-5)
    with pytest.raises(ValueError, match="set error_feedback=True"):
        FedZipStrategy(FedAvg(), compressor=codec, step_ahead=0.5)
    with pytest.raises(ValueError, match="step_ahead"):
        FedZipStrategy(FedAvg(), compressor=codec, error_feedback=True, step_ahead=1.5)


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


def test_the_wrapper_reads_and_writes_the_inner_strategys_attributes():
    inner = FedAvg(fraction_train=0.5, min_available_nodes=7)
    strategy = FedZipStrategy(inner)
    assert strategy.fraction_train == 0.5 and strategy.min_available_nodes == 7
    strategy.fraction_train = 0.25
    assert inner.fraction_train == 0.25 and strategy.fraction_train == 0.25
    strategy.min_accepted = 3  # the wrapper's own attribute stays its own
    assert strategy.min_accepted == 3 and not hasattr(inner, "min_accepted")
    with pytest.raises(AttributeError):
        _ = strategy.no_such_attribute


def test_error_feedback_defaults_to_what_the_compressor_needs():
    assert FedZipStrategy(compressor="stc").error_feedback is True
    assert FedZipStrategy(compressor="stc", error_feedback=False).error_feedback is False
    assert FedZipStrategy(compressor="fedzip").error_feedback is False
    assert FedZipStrategy(compressor={"id": "topk", "keep": 0.1}, error_feedback=True).error_feedback is True


def test_compositions_that_would_break_client_side_dp_are_refused():
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    def dp():
        return DifferentialPrivacyClientSideFixedClipping(FedAvg(), 1.0, 0.5, 2)

    with pytest.raises(ValueError, match="error feedback"):
        FedZipStrategy(dp(), compressor="stc")
    with pytest.raises(ValueError, match="larger norm"):
        FedZipStrategy(dp(), compressor="qsgd")
    FedZipStrategy(dp(), compressor="stc", error_feedback=False)  # allowed: STC never grows the norm
    with pytest.raises(ValueError, match="another FedZipStrategy"):
        FedZipStrategy(FedZipStrategy())


def test_settings_travel_in_the_inner_strategys_config_record(rng):
    model = global_model(rng)
    user_config = ConfigRecord({"lr": 0.1})
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2), compressor=fedzip.FedZip(keep=0.1))
    messages = list(strategy.configure_train(3, to_record(model), user_config, FakeGrid([0, 1])))
    for message in messages:
        (name,) = message.content.config_records
        config = message.content.config_records[name]
        assert name == "config" and config["lr"] == 0.1 and config["server-round"] == 3
        sent = fedzip.get_compressor(json.loads(config[protocol.CODEC_KEY]))
        assert sent == fedzip.FedZip(keep=0.1, known_layout=True)  # keyed: the server knows the model
    assert protocol.CODEC_KEY not in user_config  # the user's record is not edited

    # What the ClientApp behind the mod sees: the message as the inner strategy built it.
    content = RecordDict(dict(messages[0].content.items()))
    assert protocol.pop_settings(content) is not None
    assert dict(content.config_records["config"]) == {"lr": 0.1, "server-round": 3}
    assert protocol.pop_settings(content) is None


def test_zero_d_arrays_keep_their_shape_in_records_payloads_and_residuals():
    arrays = {
        "scale": np.array(0.5, np.float32),
        "count": np.array(7, np.int64),
        "w": np.ones((2, 3), np.float64),
    }
    back = protocol.from_record(protocol.to_record(arrays))
    assert {k: (v.shape, v.dtype) for k, v in back.items()} == {
        k: (v.shape, v.dtype) for k, v in arrays.items()
    }

    model = {"scale": np.array(1.0, np.float32), "w": np.zeros((8, 8), np.float32), "count": np.array(0)}

    def app(msg, context):
        received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        trained = {
            "scale": received["scale"] + 0.25,
            "w": received["w"] + 0.01,
            "count": (received["count"] + 5).astype(np.int64),  # as load_state_dict would cast it
        }
        return Message(
            RecordDict({"arrays": protocol.to_record(trained), "metrics": MetricRecord({"num-examples": 1})}),
            reply_to=msg,
        )

    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.5, sparsify_1d=True),
        error_feedback=True,
    )
    ctx = context(0)
    for server_round in (1, 2, 3):
        replies = run_round(strategy, model, [app], [ctx])
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.history[-1].accepted == 1
        model = {k: a.numpy() for k, a in arrays.items()}
        residual = protocol.from_record(ctx.state.array_records[protocol.RESIDUAL])
        assert residual["scale"].shape == () and "count" not in residual
    assert model["scale"].shape == () and model["count"].shape == ()
    np.testing.assert_allclose(model["scale"], 1.75, rtol=1e-6)
    assert float(model["count"]) == 15.0


def test_a_residual_from_another_model_is_reset_not_an_error(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.1),
        error_feedback=True,
    )
    ctx = context(0)
    ctx.state[protocol.RESIDUAL] = to_record({"other": np.ones(3, np.float32)})
    delta = {k: np.full_like(v, 0.5) for k, v in model.items()}
    replies = run_round(strategy, model, [make_client(delta, 1)], [ctx])
    strategy.aggregate_train(1, replies)
    assert strategy.history[-1].accepted == 1
    assert set(ctx.state.array_records[protocol.RESIDUAL]) == set(model)


def test_without_error_feedback_no_residual_is_kept(rng):
    model = global_model(rng)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=fedzip.FedZip(keep=0.1)
    )
    ctx = context(0)
    ctx.state[protocol.RESIDUAL] = to_record({k: np.ones_like(v) for k, v in model.items()})
    run_round(strategy, model, [make_client(model, 1)], [ctx])
    assert protocol.RESIDUAL not in ctx.state.array_records


def test_the_mod_refuses_settings_it_cannot_read(rng):
    model = global_model(rng)
    content = RecordDict(
        {"arrays": to_record(model), "config": ConfigRecord({protocol.CODEC_KEY: '{"id": "zstd-9000"}'})}
    )
    msg = Message(content, dst_node_id=0, message_type="train")
    reply = fedzip_mod(msg, context(0), make_client(model, 1))
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "zstd-9000" in reply.error.reason


def test_a_client_cannot_choose_where_the_weights_go(rng):
    """The reply's records are the server's to name: extra or clashing records are refused."""
    model = global_model(rng)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2, min_train_nodes=2), compressor="none")
    first, second = strategy.configure_train(1, to_record(model), ConfigRecord({}), FakeGrid([0, 1]))
    payload = fedzip.NoCompression().encode({k: np.ones_like(v) for k, v in model.items()})
    clashing = reply_with(first, payload)
    clashing.content["arrays"] = to_record(model)
    honest = reply_with(second, payload)
    arrays, _ = strategy.aggregate_train(1, [clashing, honest])
    np.testing.assert_allclose(arrays["w"].numpy(), model["w"] + 1)
    assert "unexpected records" in strategy.history[-1].failures[0]


def test_warm_up_sends_a_larger_keep_in_the_first_rounds(rng):
    from fedzip.schedule import KeepWarmup

    model = global_model(rng)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.01),
        warmup=KeepWarmup(rounds=2, start=0.25),
    )

    def keep_of(server_round):
        message = next(
            iter(strategy.configure_train(server_round, to_record(model), ConfigRecord({}), FakeGrid(1)))
        )
        config = next(iter(message.content.config_records.values()))
        return json.loads(config[protocol.CODEC_KEY])["keep"]

    assert [keep_of(r) for r in (1, 2, 3, 10)] == pytest.approx(
        [0.25, 0.25 * (0.01 / 0.25) ** 0.5, 0.01, 0.01]
    )
    with pytest.raises(ValueError, match="keep or a budget"):
        FedZipStrategy(FedAvg(), compressor="signsgd", warmup=KeepWarmup())


def test_momentum_correction_keeps_a_velocity_in_the_node_state(rng):
    model = global_model(rng)
    delta = {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.05),
        error_feedback=True,
        momentum=0.9,
        clip_norm=10.0,
    )
    ctx = context(0)
    states = []
    for _ in range(2):
        replies = run_round(strategy, model, [make_client(delta, 10)], [ctx])
        strategy.aggregate_train(1, replies)
        assert strategy.history[-1].accepted == 1
        states.append(
            {
                key: protocol.from_record(ctx.state.array_records[key])
                for key in (protocol.VELOCITY, protocol.RESIDUAL)
            }
        )
    first, second = states
    # where round 2 sent nothing: u2 = 0.9 u1 + update (the update is delta, up to float32 rounding)
    unsent = second[protocol.RESIDUAL]["w"] != 0
    expected = 0.9 * first[protocol.VELOCITY]["w"] + delta["w"]
    np.testing.assert_allclose(second[protocol.VELOCITY]["w"][unsent], expected[unsent], atol=2e-6)
    assert not second[protocol.VELOCITY]["w"][~unsent].any()  # factor masking where it sent
    with pytest.raises(ValueError, match="error_feedback=True"):
        FedZipStrategy(FedAvg(), compressor=fedzip.FedZip(), error_feedback=False, momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        FedZipStrategy(FedAvg(), compressor=fedzip.FedZip(), error_feedback=True, momentum=1.5)


def both_ways_strategy(down=None, **options):
    return FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.1),
        error_feedback=True,
        downlink=down or fedzip.FedZip(keep=0.1, clusters=8),
        **options,
    )


@pytest.mark.parametrize(
    "down",
    [fedzip.FedZip(keep=0.1, clusters=8), fedzip.FedZip(rank=3, clusters=4, iterations=4)],
    ids=["top-z", "factors"],
)
def test_compressed_downloads_keep_every_client_on_the_servers_replica(rng, down):
    """Downloads carry the change of the global model; a node that missed rounds catches up;
    a node whose copy diverged refuses to train and is resynchronised with the dense model."""
    from fedzip.flower import downlink, replica

    model = global_model(rng)
    strategy = both_ways_strategy(down, downlink_history=4)
    contexts = [context(0), context(1), context(2)]
    deltas = [
        {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()} for _ in range(3)
    ]
    arrays = to_record(model)
    plan = {1: [0, 1, 2], 2: [0, 2], 3: [0, 1, 2], 4: [0, 1, 2]}  # node 1 misses round 2
    for server_round, nodes in plan.items():
        if server_round == 4:  # node 2's copy is corrupted (lost writes, a bug, tampering)
            held = protocol.from_record(contexts[2].state.array_records[replica.STATE_MODEL])
            held["w"][0, 0] += 1.0
            contexts[2].state[replica.STATE_MODEL] = protocol.to_record(held)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        kinds = {
            m.metadata.dst_node_id: "dense" if downlink.DOWN_MODEL in m.content.array_records else "payloads"
            for m in messages
        }
        if server_round == 1:
            assert set(kinds.values()) == {"dense"}
        if server_round == 3:
            assert kinds == {0: "payloads", 1: "payloads", 2: "payloads"}
            missed = messages[[m.metadata.dst_node_id for m in messages].index(1)]
            assert len(missed.content.array_records[downlink.DOWN_PAYLOADS]) == 2  # rounds 2 and 3
            first = protocol.array_bytes(missed.content.array_records[downlink.DOWN_PAYLOADS]["0"])
            encodings = {t.name: t.encoding for t in fedzip.inspect(first).tensors}
            assert encodings["w"] == ("lowrank" if down.rank else "dap") and encodings["b"] == "dap"
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            msg = delivered(message)
            reply = fedzip_mod(msg, contexts[node], make_client(deltas[node], 10))
            replies.append(reply)
            if not reply.has_error():
                held = protocol.from_record(contexts[node].state.array_records[replica.STATE_MODEL])
                assert downlink.checksum(held) == strategy.broadcaster.checksum
        if server_round == 4:
            failed = [r for r in replies if r.has_error()]
            assert len(failed) == 1 and "checksum" in failed[0].error.reason
        new_arrays, _ = strategy.aggregate_train(server_round, replies)  # a failed reply is not fatal
        stats = strategy.history[-1]
        assert stats.accepted == len(nodes) - (server_round == 4)
        if server_round > 1:
            assert stats.downlink_bytes * 5 < stats.downlink_raw_bytes
        arrays = new_arrays
    # round 5: node 2 gets the dense model again and trains
    messages = list(strategy.configure_train(5, arrays, ConfigRecord({}), FakeGrid([2])))
    assert downlink.DOWN_MODEL in messages[0].content.array_records
    reply = fedzip_mod(messages[0], contexts[2], make_client(deltas[2], 10))
    assert not reply.has_error()
    # the exact global model moved by the clients' updates, whatever the downloads dropped
    assert not np.allclose(protocol.from_record(arrays)["w"], model["w"])


@pytest.mark.parametrize(
    "payloads",
    [{"x": b"\x00" * 8}, {"0": b"not a fedzip payload"}, {"1": b""}],
    ids=["wrong-key", "garbage", "gap"],
)
def test_a_malformed_download_is_an_error_reply_and_the_copy_is_dropped(rng, payloads):
    from fedzip.flower import downlink, replica

    model = global_model(rng)
    strategy = both_ways_strategy()
    ctx = context(0)
    delta = {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()}
    arrays = to_record(model)
    for server_round in (1, 2):
        (message,) = strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid([0]))
        if server_round == 2:
            assert downlink.DOWN_PAYLOADS in message.content.array_records
            message.content[downlink.DOWN_PAYLOADS] = ArrayRecord(
                {k: protocol.bytes_array(v) for k, v in payloads.items()}
            )
        reply = fedzip_mod(message, ctx, make_client(delta, 10))
        updated, _ = strategy.aggregate_train(server_round, [reply])
        arrays = arrays if updated is None else updated
    assert reply.has_error() and "dropped" in reply.error.reason
    assert replica.STATE_MODEL not in ctx.state.array_records
    (message,) = strategy.configure_train(3, arrays, ConfigRecord({}), FakeGrid([0]))
    assert downlink.DOWN_MODEL in message.content.array_records  # dense again
    assert not fedzip_mod(message, ctx, make_client(delta, 10)).has_error()


def test_a_shared_start_sends_no_model_in_round_one(rng):
    """Clients that build the initial model themselves get only its checksum in round 1; a client
    whose build differs, or that has no builder, errs once and is sent the dense model next round;
    a newcomer catches up from version 0 while the payloads are in the history."""
    from fedzip.flower import downlink, replica, shared_start_mod

    model = global_model(rng)
    strategy = both_ways_strategy(downlink_history=3, downlink_shared_start=True)
    built = []

    def build(msg, ctx):
        built.append(ctx.node_id)
        return {k: v.copy() for k, v in model.items()}

    def build_wrong(msg, ctx):
        return {k: v + (k == "w") for k, v in model.items()}

    def build_broken(msg, ctx):
        raise RuntimeError("no weights file")

    mods = {
        0: shared_start_mod(build),
        1: shared_start_mod(build_wrong),
        2: None,  # no shared_start_mod
        3: shared_start_mod(build_broken),
        4: shared_start_mod(build),  # joins in round 3
    }
    contexts = {n: context(n) for n in mods}
    delta = {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()}
    arrays = to_record(model)

    def run(server_round, nodes):
        nonlocal arrays
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        sizes, replies = {}, []
        for message in messages:
            node = message.metadata.dst_node_id
            sizes[node] = sum(r.count_bytes() for r in message.content.values())
            dense = downlink.DOWN_MODEL in message.content.array_records
            msg = delivered(message)
            client = make_client(delta, 10)
            if mods[node] is None:
                reply = fedzip_mod(msg, contexts[node], client)
            else:
                reply = mods[node](msg, contexts[node], lambda m, c, app=client: fedzip_mod(m, c, app))
            replies.append((node, dense, reply))
        arrays, _ = strategy.aggregate_train(server_round, [r for _, _, r in replies])
        return sizes, {n: (d, r.error.reason if r.has_error() else "") for n, d, r in replies}

    sizes, outcome = run(1, [0, 1, 2, 3])
    assert max(sizes.values()) < 1000 < sum(v.nbytes for v in model.values())  # a checksum, not 8 KB
    assert outcome[0] == (False, "")
    assert "checksum" in outcome[1][1] and "holds no copy" in outcome[2][1]
    assert "building the initial model failed" in outcome[3][1] and "no weights file" in outcome[3][1]
    assert strategy.history[-1].accepted == 1
    _, outcome = run(2, [0, 1, 2, 3])
    assert outcome == {0: (False, ""), 1: (True, ""), 2: (True, ""), 3: (True, "")}
    _, outcome = run(3, [0, 1, 2, 3, 4])
    assert outcome[4] == (False, "")  # payloads of versions 1 and 2 on its own build of version 0
    assert built == [0, 4]  # built once, by the nodes that held no copy
    held = protocol.from_record(contexts[4].state.array_records[replica.STATE_MODEL])
    assert downlink.checksum(held) == strategy.broadcaster.checksum
    with pytest.raises(ValueError, match="downlink_shared_start needs a downlink"):
        FedZipStrategy(FedAvg(), compressor=fedzip.FedZip(), downlink_shared_start=True)


def test_past_the_history_a_patch_and_after_the_model_changed_the_model_dense(rng):
    from fedzip.flower import downlink

    model = global_model(rng)
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.1), history=2, shared_start=True)
    broadcaster.advance(model)
    assert broadcaster.content_for(7, "arrays")[0][downlink.DOWN_BASE] == 0
    for _ in range(3):
        model = {k: v + 0.01 for k, v in model.items()}
        broadcaster.advance(model)
    config, records = broadcaster.content_for(7, "arrays")  # 3 missed, 2 kept: no chain
    assert config[downlink.DOWN_BASE] == 0 and downlink.DOWN_PATCH in records  # 10% changed a round
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.1), history=8, shared_start=True)
    broadcaster.advance(model)
    broadcaster.advance({"w": model["w"][:10], "b": model["b"]})  # another model: no one can build it
    assert broadcaster.content_for(7, "arrays")[0][downlink.DOWN_BASE] == -1


def test_a_strategy_that_changes_dtypes_keeps_the_downloads_compressed(rng):
    """FedAvg averages integer buffers into float64, FedAdam keeps a float64 model: the same model
    in other dtypes, not another model. Downloads stay payloads, the client's copy takes the new
    dtypes, and a shared start stays on."""
    from fedzip.flower import downlink, replica

    start = {
        "w": rng.standard_normal((40, 30)).astype(np.float32),
        "count": np.array(3, dtype=np.int64),
    }
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.2), history=4, shared_start=True)
    state = RecordDict()
    replica.hold_start(state, start)
    model = start
    for version in range(3):
        broadcaster.advance(model)
        config, records = broadcaster.content_for(7, "arrays")
        assert config[downlink.DOWN_BASE] == max(version - 1, 0)
        assert downlink.DOWN_MODEL not in records
        content = RecordDict({"config": ConfigRecord(config), **records})
        held = replica.receive(content, state)
        assert downlink.checksum(held) == broadcaster.checksum
        broadcaster.confirm(7, broadcaster.version)
        model = {"w": (model["w"] + 0.01).astype(np.float64), "count": np.array(3.5 + version)}
    assert held["w"].dtype == held["count"].dtype == np.float64
    newcomer, _ = broadcaster.content_for(8, "arrays")
    assert newcomer[downlink.DOWN_BASE] == 0  # still from version 0


def test_budgeted_downloads_stay_within_their_budget_and_lose_nothing_over_rounds(rng):
    """A FedZip downlink with a byte budget: every download fits it, and what one round drops the
    next rounds send, so the clients' replica follows the model instead of falling behind."""
    from fedzip.flower import downlink

    model = {"w": rng.standard_normal((200, 100)).astype(np.float32), "b": np.zeros(100, np.float32)}
    start = {k: v.copy() for k, v in model.items()}
    raw = sum(v.nbytes for v in model.values())
    broadcaster = downlink.Broadcaster(fedzip.FedZip(budget_ratio=100.0))
    broadcaster.advance(model)  # the dense first version
    support = rng.random(model["w"].shape) < 0.02  # averaged sparse updates touch a few entries
    for _ in range(40):
        step = np.where(support, rng.standard_normal(support.shape) * 0.01 + 0.005, 0).astype(np.float32)
        model = {"w": model["w"] + step, "b": model["b"]}
        broadcaster.advance(model)
        assert len(broadcaster._payloads[-1]) <= raw / 100.0
    moved = np.linalg.norm(model["w"] - start["w"])
    behind = np.linalg.norm(broadcaster.replica["w"] - model["w"])
    # 0.4% behind; compressing each step without the server-side feedback leaves it 2.5% behind
    assert behind < 0.012 * moved


def test_download_options_are_the_download_codecs():
    from fedzip.fl.config import ExperimentConfig

    cfg = ExperimentConfig(download={"id": "fedzip", "budget_ratio": 500.0})
    assert (
        cfg.download_compressor() == fedzip.FedZip(budget_ratio=500.0) and cfg.compressor() == fedzip.FedZip()
    )
    with pytest.raises(ValueError, match="download codec 'stc': unknown option"):
        ExperimentConfig(download={"id": "stc", "budget_ratio": 500.0})
    with pytest.raises(ValueError, match="budget_ratio must be a number >= 1"):
        ExperimentConfig(download={"id": "fedzip", "budget_ratio": -1.0})
    with pytest.raises(ValueError, match="shared start needs a compressed download"):
        ExperimentConfig(server={"shared_start": True})


def test_the_average_does_not_depend_on_the_order_replies_arrive_in(rng):
    """Float sums depend on their order; the wrapper orders replies by content, so a seeded run repeats."""
    model = {"w": rng.standard_normal((64, 32)).astype(np.float32)}
    deltas = [
        {"w": (rng.standard_t(3, (64, 32)) * 10.0 ** rng.integers(-4, 2)).astype(np.float32)}
        for _ in range(6)
    ]
    results = []
    for permutation in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 4, 0, 2], [2, 5, 4, 0, 3, 1]):
        strategy = FedZipStrategy(
            FedAvg(min_available_nodes=6, min_train_nodes=1), compressor=fedzip.FedZip(keep=0.5)
        )
        replies = run_round(
            strategy,
            model,
            [make_client(d, 7 + i) for i, d in enumerate(deltas)],
            [context(i) for i in range(6)],
        )
        arrays, _ = strategy.aggregate_train(1, [replies[i] for i in permutation])
        results.append(arrays["w"].numpy())
    assert all(np.array_equal(results[0], other) for other in results[1:])


@pytest.mark.parametrize("memory", [None, "fedvarp", "ef21"])
def test_keyed_uploads_train_the_same_model_as_named_ones_in_fewer_bytes(rng, memory):
    """known_layout=True: the server decodes each reply with the global model's layout, less the
    tensors passed through; float64 buffers, 0-d tensors, integer counters and a frozen layer (its
    update all zeros: a keyed payload leaves its record out) included."""
    model = {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "frozen.weight": rng.standard_normal((4, 8)).astype(np.float32),
        "bn.running_var": np.ones(8, np.float64),
        "bn.num_batches_tracked": np.array(0, np.int64),
        "scale": np.array(1.0, np.float32),
    }
    deltas = [
        {
            k: (rng.standard_normal(v.shape) * 0.01 * (k != "frozen.weight")).astype(v.dtype)
            for k, v in model.items()
        }
        for _ in range(3)
    ]

    def client(delta):
        def app(msg, context):
            received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
            trained = {k: (received[k] + delta[k]).astype(model[k].dtype) for k in received}
            trained["bn.num_batches_tracked"] = np.array(int(received["bn.num_batches_tracked"]) + 3)
            content = {"arrays": protocol.to_record(trained), "metrics": MetricRecord({"num-examples": 10})}
            return Message(RecordDict(content), reply_to=msg)

        return app

    results = {}
    for known in (False, True):
        random.seed(0)  # FedAvg samples the nodes: the same order in both runs
        strategy = FedZipStrategy(
            FedAvg(min_available_nodes=3, min_train_nodes=3),
            compressor=fedzip.FedZip(keep=0.2, clusters=3, sparsify_1d=True),
            error_feedback=memory is None,
            server_memory=memory,
            norm_bound=None,
            keyed_uploads=known,
        )
        assert strategy.compressor.known_layout is known
        current, contexts = dict(model), [context(i) for i in range(3)]
        for server_round in (1, 2, 3):
            replies = run_round(
                strategy, current, [client(d) for d in deltas], contexts, server_round=server_round
            )
            arrays, _ = strategy.aggregate_train(server_round, replies)
            assert strategy.history[-1].accepted == 3, strategy.history[-1].failures
            current = {k: a.numpy() for k, a in arrays.items()}
        results[known] = (current, sum(s.uplink_bytes for s in strategy.history))
    (named, named_bytes), (keyed, keyed_bytes) = results[False], results[True]
    for name in model:
        # keyed centroids are bfloat16 (at most 2^-8 of each off), and with error feedback a
        # slightly different residual can pick other entries in later rounds: close, not equal
        moved = np.linalg.norm(named[name].astype(np.float64) - model[name])
        apart = np.linalg.norm(keyed[name].astype(np.float64) - named[name])
        assert apart <= 0.25 * moved
    np.testing.assert_allclose(keyed["frozen.weight"], model["frozen.weight"], rtol=1e-6)  # FedAvg rounds
    assert keyed_bytes < named_bytes - 9 * 20  # four tensors' names, shapes and dtypes, 9 replies


def test_the_readme_line_at_a_thousandth_works_on_a_model_of_many_small_tensors(rng):
    """``FedZipStrategy(FedAvg(), compressor=FedZip(budget_ratio=1000), error_feedback=True)`` on
    sixty 64 x 64 tensors: named, the smallest payload is over the budget and every client fails
    saying so; the strategy's keyed uploads fit and the model moves."""
    model = {
        f"blocks.{i}.body.{j}.weight": rng.standard_normal((64, 64)).astype(np.float32)
        for i in range(15)
        for j in range(4)
    }
    deltas = [
        {k: rng.standard_t(3, v.shape).astype(np.float32) * 0.01 for k, v in model.items()} for _ in range(2)
    ]
    raw = sum(v.nbytes for v in model.values())
    for keyed in (True, False):
        strategy = FedZipStrategy(
            FedAvg(min_available_nodes=2, min_train_nodes=2),
            compressor=fedzip.FedZip(budget_ratio=1000),
            error_feedback=True,
            keyed_uploads=keyed,
        )
        replies = run_round(strategy, model, [make_client(d, 10) for d in deltas], [context(0), context(1)])
        if not keyed:
            with pytest.raises(ConfigurationError, match="below the smallest payload"):
                strategy.aggregate_train(1, replies)
            continue
        arrays, _ = strategy.aggregate_train(1, replies)
        stats = strategy.history[-1]
        assert stats.accepted == 2 and stats.payload_bytes <= 2 * (raw // 1000)
        assert sum(np.count_nonzero(arrays[k].numpy() != v) for k, v in model.items()) > 0
    with pytest.raises(ValueError, match="keyed_uploads must be True or False"):
        FedZipStrategy(FedAvg(), keyed_uploads="yes")


def test_keyed_uploads_of_float32_clients_decode_against_a_float64_global_model(rng):
    """FedAdam keeps a float64 global model; user apps train it in float32: a keyed payload's digest
    names float32 tensors, and the server decodes it with the model's layout so narrowed."""
    model = {"w": rng.standard_normal((64, 32)), "b": np.zeros(32), "scale": np.array(1.0)}
    delta = {k: (rng.standard_normal(np.shape(v)) * 0.01).astype(np.float32) for k, v in model.items()}

    def app(msg, context):
        received = {k: a.numpy().astype(np.float32) for k, a in msg.content["arrays"].items()}
        trained = {k: np.asarray(received[k] + delta[k]) for k in received}
        content = {"arrays": to_record(trained), "metrics": MetricRecord({"num-examples": 10})}
        return Message(RecordDict(content), reply_to=msg)

    codec = fedzip.FedZip(keep=1.0, clusters=16, sparsify_1d=True, known_layout=True)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2, min_train_nodes=2), compressor=codec)
    replies = run_round(strategy, model, [app, app], [context(0), context(1)])
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.history[-1].accepted == 2, strategy.history[-1].failures
    sent = codec.approximate(delta)
    for name, base in model.items():
        expected = (base.astype(np.float32) + sent[name]).astype(np.float32)
        np.testing.assert_allclose(arrays[name].numpy(), expected, rtol=1e-6, atol=1e-7)


def test_a_keyed_reply_made_for_another_model_is_rejected_and_the_round_goes_on(rng):
    model = global_model(rng)
    delta = {k: np.full_like(v, 0.5) for k, v in model.items()}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=2, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=1.0, clusters=1, sparsify_1d=True, known_layout=True),
    )
    replies = run_round(
        strategy, model, [make_client(delta, 10), make_client(delta, 10)], [context(0), context(1)]
    )
    other = {"w": np.zeros((64, 31), np.float32), "b": np.zeros(32, np.float32)}  # another shape
    forged = fedzip.FedZip(keep=1.0, clusters=1, sparsify_1d=True, known_layout=True).encode(other)
    replies[1].content[protocol.PAYLOAD] = protocol.payload_record(forged)
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), model["w"] + 0.5, rtol=1e-6)
    stats = strategy.history[-1]
    assert stats.accepted == 1 and "another model" in stats.failures[0]


def test_downloads_refuse_the_keyed_container():
    with pytest.raises(ValueError, match="known_layout is for uploads"):
        FedZipStrategy(FedAvg(), downlink=fedzip.FedZip(keep=0.1, known_layout=True))
