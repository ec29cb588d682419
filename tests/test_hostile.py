"""Hostile replies and payloads: each is refused, counted, and the round goes on with the honest ones."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

import fedzip
from conftest import FakeGrid, heavy_tailed
from fedzip import exact, wire
from fedzip.compressors import QSGD
from fedzip.flower import FedZipStrategy, protocol

HONEST = 4


pytestmark = pytest.mark.usefixtures("task_identity")


def model():
    rng = np.random.default_rng(3)
    return {
        "w": rng.standard_normal((32, 16)).astype(np.float32),
        "b": np.zeros(16, np.float32),
        "count": np.array(4, np.int64),
    }


def honest_update(i):
    """What a client's update holds: float tensors, and an integer counter that grew by one."""
    rng = np.random.default_rng(100 + i)
    return {"w": heavy_tailed(rng, (32, 16)), "b": heavy_tailed(rng, (16,)), "count": np.array(1, np.int64)}


def scaled(update, factor):
    return {k: v * factor if v.dtype.kind == "f" else v for k, v in update.items()}


def reply(message, payload, metrics=None, extra=None):
    content = RecordDict({protocol.PAYLOAD: protocol.payload_record(payload)})
    content["metrics"] = MetricRecord({"num-examples": 10} if metrics is None else metrics)
    for key, record in (extra or {}).items():
        content[key] = record
    return Message(content, reply_to=message)


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def with_centroid(payload: bytes, value: float, layout=None) -> bytes:
    """The same payload with every centroid set to ``value`` and a valid checksum (``layout``: a
    keyed payload's model; it stays keyed)."""
    records = [
        wire.Record(
            r.name,
            r.dtype,
            r.shape,
            r.encoding,
            r.kept,
            np.full_like(r.centroids, value),
            r.body_bits,
            r.body,
        )
        for r in wire.read(payload, layout=layout)
    ]
    return wire.write(records, keyed=wire.is_keyed(payload))


def raw_nan_payload() -> bytes:
    """A ``none`` payload whose body holds NaN, framed and checksummed correctly."""
    values = np.full((32, 16), np.nan, np.float32)
    records = [
        wire.Record(
            "w",
            np.dtype(np.float32),
            (32, 16),
            16,
            values.size,
            np.zeros(0, np.float32),
            8 * values.nbytes,
            values.tobytes(),
        ),
        wire.Record("b", np.dtype(np.float32), (16,), 16, 16, np.zeros(0, np.float32), 8 * 64, bytes(64)),
        exact.record("count", np.array(1, np.int64)),
    ]
    return wire.write(records)


CODEC = fedzip.FedZip(keep=0.2, clusters=4)


def faults(codec):
    """name -> (build the hostile reply from the train message, words expected in its rejection)."""
    update = honest_update(99)
    good = codec.encode(update)
    many = wire.write(
        [
            wire.Record(f"t{i}", np.dtype(np.float32), (0,), 3, 0, np.zeros(0, np.float32), 0, b"")
            for i in range(10**5)
        ]
    )
    bomb = wire.write(
        [wire.Record("w", np.dtype(np.float32), (10**9,), 3, 0, np.zeros(0, np.float32), 0, b"")]
    )
    return {
        "nan-in-a-raw-body": (lambda m: reply(m, raw_nan_payload()), "another codec"),
        "centroid-3.4e38": (lambda m: reply(m, with_centroid(good, 3.4e38)), "norm"),
        "weights-times-1e30": (
            lambda m: reply(m, codec.encode(scaled(update, 1e30))),
            "norm",
        ),
        "integers-for-a-float-tensor": (
            lambda m: reply(m, codec.encode({**update, "w": np.full((32, 16), 2**30, np.int32)})),
            "int32 in the payload, float32 in the model",
        ),
        "a-float-counter": (
            lambda m: reply(m, codec.encode({**update, "count": np.array(1e30, np.float32)})),
            "float32 in the payload, int64 in the model",
        ),
        "a-narrower-counter": (
            lambda m: reply(m, codec.encode({**update, "count": np.array(-1, np.int8)})),
            "int8 in the payload, int64 in the model",
        ),
        "huge-integer-buffer": (
            lambda m: reply(m, codec.encode({**update, "count": np.array(2**62)})),
            "norm",
        ),
        "extra-array-record": (
            lambda m: reply(m, good, extra={"metrics2": ArrayRecord({"x": Array(np.zeros(3))})}),
            "unexpected records",
        ),
        "clashing-weights-key": (
            lambda m: reply(m, good, extra={"arrays": ArrayRecord({"w": Array(np.zeros(3))})}),
            "unexpected records",
        ),
        "missing-num-examples": (lambda m: reply(m, good, metrics={"loss": 1.0}), "'num-examples'"),
        "negative-num-examples": (lambda m: reply(m, good, metrics={"num-examples": -1e9}), "positive"),
        "extra-metric-key": (lambda m: reply(m, good, metrics={"num-examples": 10, "evil": 1}), "differ"),
        "another-codec": (lambda m: reply(m, fedzip.get_compressor("stc").encode(update)), "another codec"),
        "decompression-bomb": (lambda m: reply(m, bomb), "max_elements"),
        "many-empty-tensors": (lambda m: reply(m, many), "max_tensors"),
        "garbage": (lambda m: reply(m, b"FZIP\x01" + bytes(40)), "malformed"),
        "payload-not-uint8": (
            lambda m: Message(
                RecordDict(
                    {
                        protocol.PAYLOAD: ArrayRecord({"payload": Array(np.zeros(8, np.float64))}),
                        "metrics": MetricRecord({"num-examples": 10}),
                    }
                ),
                reply_to=m,
            ),
            "uint8",
        ),
        "crashed-client": (
            lambda m: Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=m),
            "boom",
        ),
    }


def run_round(strategy, hostile):
    """One round: the hostile replies, then HONEST honest ones; returns the new model.

    ``strategy.hostile_nodes`` lists the node each hostile reply came from, in order.
    """
    messages = list(
        strategy.configure_train(
            1, protocol.to_record(model()), ConfigRecord({}), FakeGrid(len(hostile) + HONEST)
        )
    )
    replies = [make(m) for (make, _), m in zip(hostile, messages, strict=False)]
    strategy.hostile_nodes = [m.metadata.dst_node_id for m in messages[: len(hostile)]]
    for i, m in enumerate(messages[len(hostile) :]):
        replies.append(reply(m, CODEC.encode(honest_update(i))))
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: a.numpy() for k, a in arrays.items()}


def honest_only_model():
    strategy = FedZipStrategy(FedAvg(min_available_nodes=HONEST), compressor=CODEC)
    return run_round(strategy, [])


@pytest.mark.parametrize("fault", list(faults(CODEC)))
def test_one_hostile_reply_among_honest_ones(fault):
    make, expected = faults(CODEC)[fault]
    strategy = FedZipStrategy(FedAvg(min_available_nodes=HONEST + 1), compressor=CODEC)
    got = run_round(strategy, [(make, expected)])
    stats = strategy.history[-1]
    assert stats.accepted == HONEST and len(stats.failures) == 1, stats.failures
    assert expected in stats.failures[0]
    for name, value in honest_only_model().items():
        assert np.all(np.isfinite(got[name]))
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_every_fault_in_one_round():
    table = faults(CODEC)
    strategy = FedZipStrategy(FedAvg(min_available_nodes=len(table) + HONEST), compressor=CODEC)
    got = run_round(strategy, list(table.values()))
    stats = strategy.history[-1]
    assert stats.accepted == HONEST and len(stats.failures) == len(table)
    reasons = {int(line.split(":")[0].split()[1]): line for line in stats.failures}
    for (_, expected), node in zip(table.values(), strategy.hostile_nodes, strict=True):
        assert expected in reasons[node]
    for name, value in honest_only_model().items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_an_absolute_norm_bound_works_with_two_replies():
    strategy = FedZipStrategy(FedAvg(min_available_nodes=2), compressor=CODEC, max_update_norm=100.0)
    messages = list(strategy.configure_train(1, protocol.to_record(model()), ConfigRecord({}), FakeGrid(2)))
    replies = [
        reply(messages[0], CODEC.encode(scaled(honest_update(0), 1e6))),
        reply(messages[1], CODEC.encode(honest_update(1))),
    ]
    strategy.aggregate_train(1, replies)
    stats = strategy.history[-1]
    assert stats.accepted == 1 and "exceeds the bound 100" in stats.failures[0]
    with pytest.raises(ValueError, match="norm_bound"):
        FedZipStrategy(norm_bound=-1)


def test_the_norm_reference_carries_over_to_rounds_with_few_replies():
    strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=CODEC)
    run_round(strategy, [])  # 4 honest replies set the reference
    (message,) = strategy.configure_train(2, protocol.to_record(model()), ConfigRecord({}), FakeGrid(1))
    assert strategy.aggregate_train(2, [reply(message, CODEC.encode(scaled(honest_update(0), 1e3)))]) == (
        None,
        None,
    )
    assert "norm" in strategy.history[-1].failures[0]


def test_counters_that_grew_by_hundreds_hide_no_weight_update_and_a_buffer_that_never_moves_stays():
    """BatchNorm's counters grow by the batches trained: counted with the weights, 360 of change would
    hide weights 30 times too large under a bound of 10 medians. They are measured apart, and an
    integer tensor no honest client changes (position ids) may not change at all."""
    big = {**model(), "ids": np.arange(6, dtype=np.int32)}
    strategy = FedZipStrategy(FedAvg(min_available_nodes=HONEST + 2), compressor=CODEC)
    messages = list(
        strategy.configure_train(1, protocol.to_record(big), ConfigRecord({}), FakeGrid(HONEST + 2))
    )

    def update(i, factor=1.0, ids=0):
        grown = {**scaled(honest_update(i), factor), "count": np.array(360, np.int64)}
        return {**grown, "ids": np.full(6, ids, np.int32)}

    hostile = [update(90, factor=30.0), update(91, ids=1)]
    replies = [
        reply(m, CODEC.encode(u))
        for m, u in zip(messages, hostile + [update(i) for i in range(HONEST)], strict=True)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    stats = strategy.history[-1]
    assert stats.accepted == HONEST, stats.failures
    assert "update norm" in stats.failures[0] and "integer tensor 'ids' changed" in stats.failures[1]
    got = protocol.from_record(arrays)
    assert got["count"] == 4 + 360 and got["count"].dtype == np.int64
    np.testing.assert_array_equal(got["ids"], np.arange(6))


# --- decoders: every compressor, structure-aware mutations behind a valid checksum ---------------

COMPRESSORS = [
    fedzip.FedZip(keep=0.1, clusters=4, encoding="huffman"),
    fedzip.FedZip(keep=0.1, clusters=4, encoding="position"),
    fedzip.FedZip(keep=0.1, clusters=4, encoding="dap"),
    fedzip.get_compressor("none"),
    fedzip.get_compressor("fp16"),
    fedzip.get_compressor({"id": "topk", "keep": 0.1}),
    fedzip.get_compressor({"id": "qsgd", "levels": 8, "bucket": 64, "seed": 1}),
    fedzip.get_compressor("signsgd"),
    fedzip.get_compressor({"id": "stc", "keep": 0.1}),
]
SPECIAL = [0, 1, 2, 0x7F, 0x80, 0xFF]
FLOATS = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0, -1.0]


def _varint(value):
    return wire._varint(value)


def mutations(payload: bytes, rng: np.random.Generator, count: int):
    """Resealed payloads with bytes, header fields and float parameters changed."""
    body = payload[:-4]
    records = wire.read(payload)
    for _ in range(count):
        kind = rng.integers(4)
        if kind == 0:  # random bytes
            data = bytearray(body)
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(5, len(data))] = rng.integers(256)
            yield reseal(bytes(data))
        elif kind == 1:  # a byte set to a boundary value
            data = bytearray(body)
            data[rng.integers(5, len(data))] = SPECIAL[rng.integers(len(SPECIAL))]
            yield reseal(bytes(data))
        elif kind == 2:  # a header field of one record set to an extreme
            rec = records[rng.integers(len(records))]
            field = rng.integers(4)
            big = int(rng.choice([0, 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1]))
            shape, kept, bits = rec.shape, rec.kept, rec.body_bits
            if field == 0 and shape:
                shape = tuple(big if i == rng.integers(len(shape)) else d for i, d in enumerate(shape))
            elif field == 1:
                kept = big
            else:
                bits = big
            changed = [
                wire.Record(r.name, r.dtype, shape, r.encoding, kept, r.centroids, bits, r.body)
                if r is rec
                else r
                for r in records
            ]
            try:
                yield wire.write(changed)
            except (OverflowError, ValueError, struct.error):
                continue
        else:  # a float parameter (centroid, scale, norm) set to an extreme
            with_params = [r for r in records if r.centroids.size]
            if not with_params:
                continue
            rec = with_params[rng.integers(len(with_params))]
            centroids = rec.centroids.copy()
            centroids[rng.integers(centroids.size)] = FLOATS[rng.integers(len(FLOATS))]
            changed = [
                wire.Record(r.name, r.dtype, r.shape, r.encoding, r.kept, centroids, r.body_bits, r.body)
                if r is rec
                else r
                for r in records
            ]
            yield wire.write(changed)


def fuzz(compressor, count, seed):
    rng = np.random.default_rng(seed)
    update = {
        "conv": heavy_tailed(rng, (8, 3, 3, 3)),
        "fc": heavy_tailed(rng, (40, 30), np.float16),
        "bias": heavy_tailed(rng, (30,), np.float64),
        "scale": np.asarray(0.5, np.float32),
    }
    limit = 10 * sum(v.size for v in update.values())
    payload = compressor.encode(update)
    worst = 0.0
    outcomes = {"decoded": 0, "refused": 0}
    for mutated in mutations(payload, rng, count):
        started = time.perf_counter()
        try:
            out = fedzip.decode(mutated, max_elements=limit, max_tensors=16)
        except fedzip.FormatError:
            outcomes["refused"] += 1
        else:
            outcomes["decoded"] += 1
            assert sum(v.size for v in out.values()) <= limit
            for value in out.values():
                assert np.all(np.isfinite(value))
        worst = max(worst, time.perf_counter() - started)
    assert worst < 2.0, f"a mutated payload of {len(payload)} bytes took {worst:.2f} s"
    assert outcomes["refused"] > 0
    return outcomes


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=repr)
def test_structure_aware_fuzz(compressor):
    fuzz(compressor, 300, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("compressor", COMPRESSORS, ids=repr)
def test_structure_aware_fuzz_ten_thousand_cases(compressor):
    fuzz(compressor, 10_000, seed=12)


def test_a_qsgd_bucket_far_larger_than_the_tensor_costs_nothing():
    import tracemalloc

    tracemalloc.start()
    try:
        payload = QSGD(bucket=2**32 - 1, seed=0).encode({"t": np.arange(10, dtype=np.float32)})
        out = fedzip.decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out["t"].shape == (10,) and peak < 1_000_000 and len(payload) < 100


def test_two_megabytes_of_empty_tensors_decode_or_are_refused_fast():
    """Linear, not worse: decoding takes a few times what writing the container took (timed in the
    same run, so a loaded machine slows both), and refusing by count does not read the tensors."""
    count = 150_000
    records = [
        wire.Record(f"{i}", np.dtype(np.float32), (0,), 16, 0, np.zeros(0, np.float32), 0, b"")
        for i in range(count)
    ]
    started = time.perf_counter()
    payload = wire.write(records)
    writing = time.perf_counter() - started
    assert len(payload) < 2_100_000
    started = time.perf_counter()
    assert len(fedzip.decode(payload)) == count
    decoding = time.perf_counter() - started
    assert decoding < 10 * writing
    started = time.perf_counter()
    with pytest.raises(fedzip.FormatError, match="max_tensors"):
        fedzip.decode(payload, max_tensors=100)
    assert time.perf_counter() - started < decoding / 10


def test_an_absurd_shape_is_a_format_error():
    payload = wire.write(
        [
            wire.Record(
                "w", np.dtype(np.float32), (2**63 - 1, 2**63 - 1, 0), 16, 0, np.zeros(0, np.float32), 0, b""
            )
        ]
    )
    with pytest.raises(fedzip.FormatError, match="larger than any array"):
        fedzip.decode(payload)
