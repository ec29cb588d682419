"""The baseline compressors: real payloads, exact decoding, their papers' semantics."""

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedzip
from conftest import heavy_tailed
from fedzip import huffman, wire
from fedzip.bitio import BitReader, BitWriter
from fedzip.compressors import QSGD, STC, Float16, LowRank, SignSGD, TopK
from fedzip.compressors.stc import golomb_parameter
from fedzip.feedback import ErrorFeedback

BASELINES = [
    Float16(),
    TopK(keep=0.01),
    TopK(keep=1.0),
    QSGD(levels=16, bucket=512, seed=1),
    QSGD(levels=1, bucket=7, seed=2),
    SignSGD(),
    STC(keep=0.0025),
    STC(keep=0.3),
    LowRank(rank=1, clusters=8),
    LowRank(rank=3, clusters=2, iterations=1, seed=9),
]
IDS = [repr(c) for c in BASELINES]


def update_of(rng, dtype=np.float32):
    return {
        "conv": heavy_tailed(rng, (32, 16, 3, 3), dtype),
        "fc": heavy_tailed(rng, (300, 200), dtype),
        "bias": heavy_tailed(rng, (32,), dtype),
        "empty": np.zeros((0, 4), dtype),
        "scalar": np.asarray(0.25, dtype),
    }


@pytest.mark.parametrize("codec", BASELINES, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_decode_is_exactly_what_the_encoder_reconstructs(rng, codec, dtype):
    update = update_of(rng, dtype)
    payload, sent = codec.encode_with_approximation(update)
    restored = fedzip.decode(payload)
    assert list(restored) == list(update)
    for name, array in update.items():
        assert restored[name].dtype == array.dtype and restored[name].shape == array.shape
        np.testing.assert_array_equal(restored[name], sent[name])
    assert fedzip.inspect(payload).total_bytes == len(payload)


@pytest.mark.parametrize("codec", BASELINES, ids=IDS)
def test_config_round_trip(codec):
    config = codec.get_config()
    assert fedzip.get_compressor(config) == codec
    with pytest.raises(ValueError, match="unknown option"):
        fedzip.get_compressor({**config, "bogus": 1})


@pytest.mark.parametrize("codec", BASELINES, ids=IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_are_rejected(codec, bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.encode({"w": np.array([1.0, bad], np.float32)})


@pytest.mark.parametrize(
    "config",
    [
        {"id": "topk", "keep": 0},
        {"id": "topk", "keep": 1.5},
        {"id": "stc", "keep": True},
        {"id": "qsgd", "levels": 0},
        {"id": "qsgd", "levels": 256},
        {"id": "qsgd", "bucket": 0},
        {"id": "qsgd", "seed": -1},
        {"id": "lowrank", "rank": 0},
        {"id": "lowrank", "rank": 65},
        {"id": "lowrank", "clusters": 1},
        {"id": "lowrank", "clusters": 257},
        {"id": "lowrank", "iterations": 0},
        {"id": "lowrank", "rank": 1.0},
    ],
)
def test_bad_options_raise_value_error(config):
    with pytest.raises(ValueError, match=r"must be"):
        fedzip.get_compressor(config)


def test_every_baseline_is_registered():
    assert {"none", "fp16", "topk", "qsgd", "signsgd", "stc", "lowrank", "fedzip"} <= set(fedzip.available())


def test_fp16_halves_the_bytes_and_refuses_what_it_cannot_hold(rng):
    x = heavy_tailed(rng, (1000, 100))
    payload = Float16().encode({"x": x})
    assert 2 * x.size <= len(payload) < 2 * x.size + 64
    np.testing.assert_array_equal(fedzip.decode(payload)["x"], x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        Float16().encode({"x": np.array([1e6], np.float32)})


def test_topk_sends_the_largest_entries_exactly(rng):
    x = heavy_tailed(rng, (1000, 50))
    out = fedzip.decode(TopK(keep=0.02).encode({"x": x}))["x"]
    kept = np.flatnonzero(out)
    assert kept.size == 1000
    np.testing.assert_array_equal(out.reshape(-1)[kept], x.reshape(-1)[kept])
    assert np.abs(x).reshape(-1)[kept].min() >= np.abs(np.delete(x.reshape(-1), kept)).max()
    # 32-bit index + 32-bit value per kept entry, plus the record header
    size = len(TopK(keep=0.02).encode({"x": x}))
    assert 8000 <= size < 8000 + 64


def test_qsgd_levels_and_norms():
    x = np.array([3.0, -4.0, 0.0, 1.0, -1.0, 2.0], np.float32)
    out = fedzip.decode(QSGD(levels=4, bucket=2, seed=0).encode({"x": x}))["x"]
    norms = np.repeat([5.0, 1.0, np.hypot(1, 2)], 2).astype(np.float32)
    steps = out / norms * 4
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)  # multiples of norm / levels
    assert np.all(np.abs(steps) <= 4 + 1e-6) and np.all(np.sign(out) * np.sign(x) >= 0)
    assert np.all(np.abs(np.abs(steps) - np.abs(x) / norms * 4) < 1 + 1e-5)  # rounded up or down
    assert out[2] == 0


def test_qsgd_is_unbiased_and_seeded(rng):
    x = {"x": rng.normal(size=64).astype(np.float32)}
    codec = QSGD(levels=2, bucket=16, seed=3)
    draws = np.stack([codec.approximate(x)["x"] for _ in range(3000)])
    spread = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - x["x"]) <= 5 * spread + 1e-6)
    assert QSGD(seed=9).encode(x) == QSGD(seed=9).encode(x)


def test_qsgd_codes_levels_compactly(rng):
    x = heavy_tailed(rng, (200_000,))
    size = len(QSGD(levels=4, bucket=512).encode({"x": x}))
    assert size < x.size * 4 / 12  # well under 3 bits per entry with 4 levels


def test_signsgd_sends_scaled_signs_in_one_bit_each(rng):
    x = heavy_tailed(rng, (4000, 10))
    payload = SignSGD().encode({"x": x})
    out = fedzip.decode(payload)["x"]
    scale = np.float32(np.abs(x).mean(dtype=np.float64))
    np.testing.assert_array_equal(out, np.where(x < 0, -scale, scale))
    assert x.size / 8 <= len(payload) < x.size / 8 + 64


def test_ef_signsgd_loses_nothing_over_rounds(rng):
    sender = fedzip.ErrorFeedback(SignSGD())
    total_in, total_out = np.zeros(500), np.zeros(500)
    for _ in range(200):
        step = heavy_tailed(rng, (500,)).astype(np.float32)
        total_in += step
        total_out += fedzip.decode(sender.encode({"w": step}))["w"]
    # What was not sent is exactly the residual, which stays bounded.
    np.testing.assert_allclose(total_in - total_out, sender.residual["w"], atol=1e-4)
    assert np.abs(sender.residual["w"]).max() < 50 * np.abs(step).max()


def test_golomb_parameter_is_sattlers_formula():
    for p in [0.5, 0.1, 0.01, 1 / 400, 0.001]:
        expected = 1 + math.floor(math.log2(math.log((math.sqrt(5) - 1) / 2) / math.log(1 - p)))
        assert golomb_parameter(p) == max(expected, 0)
    assert golomb_parameter(1 / 400) == 8


def test_stc_ternarises_the_top_entries(rng):
    x = heavy_tailed(rng, (1000, 100))
    out = fedzip.decode(STC(keep=0.01).encode({"x": x}))["x"].reshape(-1)
    flat = x.reshape(-1)
    kept = np.flatnonzero(out)
    assert kept.size == 1000
    mu = np.float32(np.abs(flat[kept]).mean(dtype=np.float64))
    np.testing.assert_array_equal(out[kept], np.where(flat[kept] < 0, -mu, mu))
    assert np.abs(flat[kept]).min() >= np.abs(np.delete(flat, kept)).max()


def test_stc_reaches_about_a_thousand_x_at_p_one_in_400(rng):
    x = heavy_tailed(rng, (1000, 1000))
    payload = STC(keep=1 / 400).encode({"x": x})
    assert 4 * x.size / len(payload) > 1000


@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=8),
        hnp.arrays(
            st.sampled_from([np.float16, np.float32, np.float64]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
            elements=st.floats(-1000, 1000, width=16),
        ),
        max_size=3,
    ),
    codec=st.sampled_from(BASELINES),
)
def test_round_trip_property(arrays, codec):
    payload, sent = codec.encode_with_approximation(arrays)
    restored = fedzip.decode(payload)
    assert list(restored) == list(arrays)
    for name in arrays:
        np.testing.assert_array_equal(restored[name], sent[name])
        assert restored[name].dtype == arrays[name].dtype


@pytest.fixture(scope="module")
def payloads():
    rng = np.random.default_rng(7)
    update = {"conv": heavy_tailed(rng, (8, 3, 3, 3)), "fc": heavy_tailed(rng, (40, 30), np.float16)}
    return {repr(c): c.encode(update) for c in BASELINES}


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("name", IDS)
def test_every_truncation_fails(payloads, name):
    payload = payloads[name]
    for length in range(len(payload)):
        with pytest.raises(fedzip.FormatError):
            fedzip.decode(payload[:length])


@pytest.mark.parametrize("name", IDS)
def test_mutations_behind_a_valid_checksum_fail_cleanly(payloads, name):
    body = payloads[name][:-4]
    rng = np.random.default_rng(5)
    for _ in range(600):
        data = bytearray(body)
        data[rng.integers(5, len(data))] = rng.integers(256)
        try:
            out = fedzip.decode(reseal(bytes(data)), max_elements=10**5)
        except fedzip.FormatError:
            continue
        for value in out.values():
            assert isinstance(value, np.ndarray) and np.all(np.isfinite(value))


def one_record(encoding, kept, params, body_bits, body, shape=(8,)):
    rec = wire.Record(
        "w", np.dtype(np.float32), shape, encoding, kept, np.asarray(params, np.float32), body_bits, body
    )
    return wire.write([rec])


def lowrank_record(clusters, rank, labels, centroids, shape=(8,), alphabet=None):
    writer = BitWriter()
    writer.write(clusters - 1, 8)
    writer.write(rank, 16)
    if labels:
        huffman.write_stream(writer, np.asarray(labels), alphabet or clusters)
    return one_record(22, len(labels), centroids, writer.nbits, writer.getvalue(), shape)


@pytest.mark.parametrize(
    "payload",
    [
        one_record(17, 8, [], 128, bytes([0, 0x7C] * 8)),  # float16 +Inf
        one_record(17, 7, [], 128, bytes(16)),  # kept != size
        one_record(18, 2, [], 128, struct.pack("<II", 5, 3) + bytes(8)),  # indices not increasing
        one_record(18, 1, [], 64, struct.pack("<I", 8) + bytes(4)),  # index outside the tensor
        one_record(20, 8, [-1.0], 8, b"\x00"),  # negative scale
        one_record(20, 8, [1.0, 2.0], 8, b"\x00"),  # two scales
        one_record(20, 8, [np.nan], 8, b"\x00"),  # NaN scale
        one_record(21, 9, [1.0], 8, b"\xff"),  # more kept than entries
        one_record(19, 0, [1.0], 41, bytes(6)),  # levels = 0
        lowrank_record(1, 0, [], []),  # one cluster
        lowrank_record(2, 1, [0, 1] * 4, [0.0, 1.0] * 2),  # rank 1 of a vector
        lowrank_record(2, 65, [0] * 8, [0.0, 1.0] * 130, shape=(1000, 1000)),  # rank beyond 64
        lowrank_record(2, 0, [0, 1] * 4, [0.0, 1.0, 2.0]),  # 3 centroids for 2 clusters
        lowrank_record(2, 1, [0, 1] * 3, [0.0, 1.0] * 2, shape=(3, 2)),  # 6 labels, rank 1 of 3x2 has 5
        lowrank_record(3, 0, [3] * 8, [0.0, 1.0, 2.0], alphabet=4),  # label 3 of 3 clusters
        lowrank_record(2, 0, [0, 1] * 4, [0.0, np.nan]),  # NaN centroid
        one_record(42, 0, [], 0, b""),  # unknown encoding
    ],
)
def test_fields_out_of_range_fail(payload):
    with pytest.raises(fedzip.FormatError):
        fedzip.decode(payload)


def test_lowrank_recovers_a_low_rank_matrix_and_pays_no_positions(rng):
    left, right = rng.choice([-1.0, 2.0], 128), rng.choice([-0.5, 0.25, 3.0], 900)
    x = np.outer(left, right).astype(np.float32)
    payload = LowRank(rank=1, clusters=4).encode({"x": x})
    # two distinct entries in P, three in Q: four levels hold them, the product comes back
    np.testing.assert_allclose(fedzip.decode(payload)["x"], x, rtol=1e-5, atol=1e-6)
    record = wire.read(payload)[0]
    assert record.kept == 128 + 900 and record.centroids.size == 2 * 4
    # no addresses: a Huffman-coded label of at most 2 bits per factor entry, and the code table
    assert record.body_bits <= 24 + 2 * record.kept + 64


def test_lowrank_product_is_a_fixed_order_sum_of_outer_products(rng):
    """The format fixes the product's arithmetic, so every reader gets the same bits."""
    x = rng.standard_normal((40, 70)).astype(np.float32)
    payload = LowRank(rank=3, clusters=5).encode({"x": x})
    record = wire.read(payload)[0]
    reader = BitReader(record.body, record.body_bits)
    assert (reader.read(8) + 1, reader.read(16)) == (5, 3)
    labels = huffman.read_stream(reader, record.kept, 5).astype(np.int64)
    column = np.repeat(np.arange(6), [40] * 3 + [70] * 3)
    values = record.centroids[column * 5 + labels]
    left, right = values[:120].reshape(3, 40), values[120:].reshape(3, 70)
    expected = np.zeros((40, 70), np.float32)
    for j in range(3):
        expected += np.outer(left[j], right[j]).astype(np.float32)
    assert fedzip.decode(payload)["x"].tobytes() == expected.tobytes()


def test_lowrank_sends_vectors_and_small_matrices_dense(rng):
    update = {"bias": rng.standard_normal(16).astype(np.float32), "small": np.eye(3, 4, dtype=np.float32)}
    payload, sent = LowRank(rank=2, clusters=16).encode_with_approximation(update)
    assert [r.kept for r in wire.read(payload)] == [16, 12]  # 2 * (3 + 4) > 12 entries: not factored
    np.testing.assert_array_equal(sent["small"], update["small"])  # two values, two levels
    np.testing.assert_array_equal(sent["bias"], update["bias"])  # 16 values, 16 levels


def test_lowrank_with_error_feedback_loses_nothing_over_rounds(rng):
    sender = ErrorFeedback(LowRank(rank=1, clusters=3))
    updates = [{"w": rng.standard_normal((20, 30)).astype(np.float32)} for _ in range(6)]
    sent = sum(fedzip.decode(sender.encode(u))["w"].astype(np.float64) for u in updates)
    np.testing.assert_allclose(sent + sender.residual["w"], sum(u["w"] for u in updates), atol=1e-4)
    # the residual shrinks the gap: the sum of what was sent points where the updates point
    total = sum(u["w"] for u in updates)
    assert np.vdot(sent, total) > 0.5 * np.linalg.norm(sent) * np.linalg.norm(total)


def test_orthonormal_spans_the_columns_and_survives_dependent_ones(rng):
    from fedzip.factors import orthonormal

    columns = rng.standard_normal((500, 12)) @ np.diag(np.geomspace(1, 1e-4, 12))
    basis = orthonormal(columns)
    assert np.allclose(basis.T @ basis, np.eye(12), atol=1e-10)
    assert np.allclose(basis @ (basis.T @ columns), columns, atol=1e-10)  # the same span
    dependent = np.concatenate((columns[:, :3], columns[:, :3]), axis=1)  # a singular Gram matrix
    basis = orthonormal(dependent)
    assert basis.shape == (500, 6) and np.all(np.isfinite(basis))
    assert np.allclose(basis @ (basis.T @ dependent), dependent, atol=1e-10)
    assert np.all(np.isfinite(orthonormal(np.zeros((50, 2)))))


@pytest.mark.parametrize("top", [4, 8])  # the matrix read once a step (small ranks), or twice
def test_leading_factors_are_ordered_and_nested(rng, top):
    """Every rank r of the budget comes from the first r columns of one factorisation."""
    from fedzip.factors import leading_factors

    strengths = np.array([5.0, 3.0, 2.0, 1.0])
    matrix = (rng.standard_normal((120, 4)) * strengths) @ rng.standard_normal((4, 90))
    matrix = (matrix + 0.01 * rng.standard_normal(matrix.shape)).astype(np.float32)
    left, right = leading_factors(matrix, top, iterations=4)
    assert np.allclose(left.T @ left, np.eye(top), atol=1e-8)
    norms = np.linalg.norm(right, axis=0)
    assert np.all(np.diff(norms) <= 1e-9)  # singular values, largest first
    exact = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    assert np.allclose(norms[:4], exact[:4], rtol=1e-4)
    for rank in (1, 2, 4):
        best = float((exact[rank:] ** 2).sum())
        error = float(((matrix - left[:, :rank] @ right[:, :rank].T) ** 2).sum())
        assert error == pytest.approx(best, rel=1e-3)


def test_factors_do_not_depend_on_the_blocks_a_matrix_is_read_in(rng, monkeypatch):
    from fedzip import factors

    matrix = (rng.standard_normal((301, 3)) @ rng.standard_normal((3, 77))).astype(np.float32)
    matrix += 0.05 * rng.standard_normal(matrix.shape).astype(np.float32)
    whole = factors.leading_factors(matrix, 3, iterations=3)
    monkeypatch.setattr(factors, "_BLOCK_BYTES", 8 * 77 * 7)  # 7 rows a block, the last one short
    blocks = factors.leading_factors(matrix, 3, iterations=3)
    for a, b in zip(whole, blocks, strict=True):
        assert np.allclose(a, b, rtol=1e-9, atol=1e-9)
    rebuilt = blocks[0] @ blocks[1].T
    best = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    assert ((matrix - rebuilt) ** 2).sum() == pytest.approx((best[3:] ** 2).sum(), rel=1e-3)
