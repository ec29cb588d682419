"""Integer and bool tensors travel exactly, inside the payload, with every compressor and through
Flower both ways (BatchNorm's num_batches_tracked, masks, index buffers)."""

from __future__ import annotations

import numpy as np
import pytest

import fedzip
from fedzip import FormatError, exact, wire
from fedzip.feedback import ErrorFeedback

DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]

COMPRESSORS = [
    fedzip.FedZip(),
    fedzip.FedZip(keep=0.05, clusters=3, encoding="huffman"),
    fedzip.FedZip(rank=2, clusters=3),
    fedzip.FedZip(budget_ratio=20),
    fedzip.FedZip(budget_ratio=20, known_layout=True),
    fedzip.FedZip(budget_ratio=20, budget_split="uniform"),
    *(fedzip.get_compressor(name) for name in ("none", "fp16", "topk", "qsgd", "signsgd", "stc", "lowrank")),
]


def extremes(dtype) -> np.ndarray:
    if dtype is np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)


def model_update(rng) -> dict[str, np.ndarray]:
    """Shaped like a BatchNorm CNN's update: weights, running statistics, a 0-d counter, other buffers."""
    return {
        "conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.01,
        "bn.running_mean": rng.standard_normal(16).astype(np.float32) * 0.01,
        "bn.num_batches_tracked": np.array(120, np.int64),
        "mask": rng.random(40) < 0.5,
        "index": rng.integers(0, 255, 30).astype(np.uint8),
        "empty": np.zeros(0, np.int32),
        "fc.weight": rng.standard_normal((10, 64)).astype(np.float64) * 0.01,
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_integer_and_bool_dtype_round_trips_at_its_extremes(dtype):
    values = extremes(dtype)
    payload = fedzip.FedZip().encode({"w": np.ones((4, 4), np.float32), "x": values})
    back = fedzip.decode(payload)["x"]
    assert back.dtype == np.dtype(dtype) and back.shape == values.shape
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize("codec", COMPRESSORS, ids=repr)
def test_every_compressor_carries_integer_and_bool_tensors_exactly_and_in_order(rng, codec):
    update = model_update(rng)
    payload, approximation = codec.encode_with_approximation(update)
    decoded = codec.decode(payload, layout=update)
    assert list(decoded) == list(update)
    for name, array in update.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape, name
        np.testing.assert_array_equal(approximation[name], decoded[name])
        if exact.is_exact(array):
            np.testing.assert_array_equal(decoded[name], array)
    # what error feedback keeps: what was not sent of the float tensors, nothing of the exact ones
    residual = {k: np.array(v, copy=True) for k, v in update.items()}
    sent = codec.decode(codec.encode_subtract(residual), layout=update)
    for name, array in update.items():
        if exact.is_exact(array):
            assert not residual[name].any(), name
            np.testing.assert_array_equal(sent[name], array)
        else:
            np.testing.assert_allclose(residual[name], array - sent[name], atol=1e-6)


def test_a_counter_that_grew_by_120_costs_six_bytes_of_a_keyed_payload():
    weights = {"w": np.ones((64, 64), np.float32) * 0.01}
    plain = fedzip.FedZip(keep=0.01, known_layout=True)
    before = len(plain.encode(weights))
    after = len(plain.encode({**weights, "bn.num_batches_tracked": np.array(120, np.int64)}))
    assert after - before == 6  # encoding, kept, clusters, body length, and a body of two bytes
    assert len(exact.record("n", np.array(120, np.int64)).body) == 2  # zigzag 240: two LEB128 bytes
    assert len(exact.record("n", np.array(63, np.int64)).body) == 1
    zeros = exact.record("n", np.zeros(9, np.int64))
    assert zeros.empty  # a keyed payload leaves it out


def test_wrapped_differences_are_small_and_undo_exactly():
    trained = np.array([0, 255, 3], np.uint8)
    received = np.array([255, 0, 3], np.uint8)
    delta = exact.difference(trained, received)
    np.testing.assert_array_equal(delta, [1, 255, 0])  # 255 is -1 wrapped: one byte
    assert len(exact.record("d", delta).body) == 3
    np.testing.assert_array_equal(exact.apply(received, delta), trained)
    big = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max])
    np.testing.assert_array_equal(exact.apply(big[::-1], exact.difference(big, big[::-1])), big)
    flags, was = np.array([True, False, True]), np.array([True, True, False])
    np.testing.assert_array_equal(exact.apply(was, exact.difference(flags, was)), flags)


def test_a_float_copy_of_an_integer_buffer_is_read_by_one_rule():
    # Flower's FedAvg averages integer buffers in float64; both sides round them the same way
    averaged = np.array([1199.5, 1200.4, np.nan, 1e300, -1e300])
    got = exact.as_dtype(averaged, np.dtype(np.int64))
    np.testing.assert_array_equal(got, [1200, 1200, 0, 2**62, -(2**62)])
    np.testing.assert_array_equal(
        exact.as_dtype(np.array([0.2, 0.5, 0.7]), np.dtype(bool)), [False, False, True]
    )
    np.testing.assert_array_equal(exact.as_dtype(np.array([300.0, -5.0]), np.dtype(np.uint8)), [255, 0])
    trained = np.array(1320, np.int64)
    assert exact.apply(np.array(1199.7), exact.difference(trained, np.array(1199.7))) == trained


def test_budgets_count_the_exact_tensors_and_say_when_they_do_not_fit(rng):
    update = model_update(rng)
    for keyed in (False, True):
        for limit in (400, 600, 1500):
            payload = fedzip.FedZip(budget_bytes=limit, known_layout=keyed).encode(update)
            assert len(payload) <= limit, (keyed, limit, len(payload))
    counters = {"w": np.ones((8, 8), np.float32), "n": np.arange(200, dtype=np.int64) * 10**6}
    with pytest.raises(ValueError, match="integer and bool tensors, sent exactly"):
        fedzip.FedZip(budget_bytes=300).encode(counters)


def test_error_feedback_keeps_no_state_for_exact_tensors_and_sends_them_every_round(rng):
    sender = ErrorFeedback(fedzip.FedZip(keep=0.05), momentum=0.9, clip_norm=0.05)
    for step in range(3):
        update = model_update(rng)
        update["bn.num_batches_tracked"] = np.array(120 + step, np.int64)
        decoded = fedzip.decode(sender.encode(update, server_round=step + 1))
        for name, array in update.items():
            if exact.is_exact(array):
                np.testing.assert_array_equal(decoded[name], array)
        assert set(sender.residual) == {k for k, v in update.items() if not exact.is_exact(v)}
        assert set(sender.velocity) == set(sender.residual)


def test_inspect_names_the_exact_records(rng):
    report = fedzip.inspect(fedzip.FedZip().encode(model_update(rng)))
    kinds = {t.name: t.encoding for t in report.tensors}
    assert kinds["bn.num_batches_tracked"] == kinds["mask"] == kinds["index"] == "exact"
    assert kinds["conv.weight"] != "exact"


def _record(dtype, encoding, kept, body, centroids=()):
    return wire.Record(
        "t", np.dtype(dtype), (3,), encoding, kept, np.asarray(centroids, np.float32), 8 * len(body), body
    )


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (_record(np.float32, wire.EXACT, 3, b"\x02\x04\x06"), "integer and bool tensors are carried exactly"),
        (_record(np.int32, 3, 3, b"\x00", [1.0]), "integer and bool tensors are carried exactly"),
        (_record(np.int32, wire.EXACT, 3, b"\x02\x04"), "2 numbers for 3 values"),
        (_record(np.int32, wire.EXACT, 3, b"\x02\x04\x06\x08"), "4 numbers for 3 values"),
        (_record(np.int32, wire.EXACT, 3, b"\x02\x04\x86"), "numbers for 3 values"),
        (_record(np.int8, wire.EXACT, 3, b"\x02\x04\x80\x02"), "outside int8"),
        (_record(np.bool_, wire.EXACT, 3, b"\x02\x04\x00"), "outside bool"),
        (_record(np.int64, wire.EXACT, 3, b"\x02\x04" + b"\xff" * 10 + b"\x01"), "longer than 64 bits"),
        (_record(np.int64, wire.EXACT, 3, b"\x02\x04" + b"\xff" * 9 + b"\x02"), "longer than 64 bits"),
        (_record(np.int32, wire.EXACT, 2, b"\x02\x04"), "every value"),
        (_record(np.int32, wire.EXACT, 3, b"\x02\x04\x06", [1.0]), "every value"),
        (_record(np.int32, wire.EXACT, 0, b"\x02"), "zeros has a body"),
    ],
)
def test_malformed_exact_records_raise_format_errors(record, words):
    payload = wire.write([record])
    with pytest.raises(FormatError, match=words):
        fedzip.decode(payload)


@pytest.mark.usefixtures("task_identity")
def test_a_batchnorm_models_counters_travel_exactly_both_ways_through_flower(rng):
    """Keyed budget uploads with error feedback, compressed downloads, a node that misses rounds:
    the counters stay int64 in the global model, grow by what the clients trained, and every
    client's copy is the server's; a reply is one payload record and nothing beside it."""
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from conftest import FakeGrid, delivered
    from fedzip.flower import FedZipStrategy, downlink, fedzip_mod, protocol, replica

    model = {
        "conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "bn.running_mean": np.zeros(16, np.float32),
        "bn.num_batches_tracked": np.array(0, np.int64),
        "mask": np.zeros(40, bool),
        "fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
    }
    # a keyed upload needs the layout: the server knows the model
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(budget_ratio=50, known_layout=True),
        error_feedback=True,
        downlink=fedzip.FedZip(keep=0.1, clusters=8),
        downlink_history=2,
    )
    contexts = [
        Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in range(3)
    ]

    def client(node):
        def app(msg, context):
            got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
            assert got["bn.num_batches_tracked"].dtype == np.int64 and got["mask"].dtype == bool
            trained = {
                k: (v + 0.01 * (node + 1)).astype(v.dtype) for k, v in got.items() if v.dtype.kind == "f"
            }
            trained["bn.num_batches_tracked"] = got["bn.num_batches_tracked"] + 120
            trained["mask"] = got["mask"].copy()
            trained["mask"][: 10 * (node + 1)] ^= True
            records = {
                "arrays": protocol.to_record({k: trained[k] for k in got}),
                "m": MetricRecord({"num-examples": 10}),
            }
            return Message(RecordDict(records), reply_to=msg)

        return app

    arrays = protocol.to_record(model)
    counter = 0
    plan = {1: [0, 1, 2], 2: [0, 2], 3: [0, 2], 4: [0, 1, 2]}  # node 1 misses rounds 2-3 (history 2)
    for server_round, nodes in plan.items():
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            msg = delivered(message)
            reply = fedzip_mod(msg, contexts[node], client(node))
            assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
            assert list(reply.content.array_records) == [protocol.PAYLOAD]
            held = protocol.from_record(contexts[node].state.array_records[replica.STATE_MODEL])
            assert downlink.checksum(held) == strategy.broadcaster.checksum
            assert held["bn.num_batches_tracked"] == counter
            replies.append(reply)
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.history[-1].accepted == len(nodes)
        new = protocol.from_record(arrays)
        counter += 120
        assert new["bn.num_batches_tracked"].dtype == np.int64 and new["bn.num_batches_tracked"] == counter
        assert new["mask"].dtype == bool
    # the mask is the clients' majority: entries 0-9 flipped by all three, 10-19 by two of three
    flips = new["mask"]
    assert flips[:20].sum() in (20, 10) and not flips[30:].any()
