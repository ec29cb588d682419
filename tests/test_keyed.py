"""The keyed container (``known_layout=True``): no names, dtypes or shapes on the wire, the receiver's
model in their place."""

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedzip
from conftest import heavy_tailed
from fedzip import wire


def model_update(rng):
    return {
        "features.0.conv.weight": heavy_tailed(rng, (16, 3, 3, 3)),
        "features.0.bn.weight": heavy_tailed(rng, (16,)),
        "features.0.bn.running_var": heavy_tailed(rng, (16,), np.float64),
        "classifier.dense.weight": heavy_tailed(rng, (64, 40), np.float16),
        "scale": np.asarray(1.5, np.float32),
    }


@pytest.mark.parametrize(
    "options",
    [
        {"keep": 0.05, "clusters": 4},
        {"keep": 0.05, "clusters": 4, "encoding": "auto"},
        {"rank": 2},
        {"budget_ratio": 10},
        {"budget_ratio": 10, "budget_split": "uniform", "clusters": 3},
    ],
)
def test_a_keyed_payload_decodes_with_the_model_to_what_the_named_one_does(rng, options):
    update = model_update(rng)
    named = fedzip.FedZip(**options).encode(update)
    codec = fedzip.FedZip(**options, known_layout=True)
    keyed = codec.encode(update)
    assert wire.is_keyed(keyed) and not wire.is_keyed(named)
    restored = fedzip.decode(keyed, layout=update)
    assert list(restored) == list(update)
    expected = codec.approximate(update)
    for name, array in update.items():
        assert restored[name].dtype == array.dtype and restored[name].shape == array.shape
        np.testing.assert_array_equal(restored[name], expected[name])
    if "budget_ratio" not in options:
        # the same records but for names, dtypes and shapes, and centroids in bfloat16
        records = wire.read(named)
        for a, b in zip(records, wire.read(keyed, layout=update), strict=True):
            if b.encoding == wire.ABSENT:
                assert a.empty
                continue
            assert (a.encoding, a.kept, a.body_bits, a.body) == (b.encoding, b.kept, b.body_bits, b.body)
            np.testing.assert_array_equal(wire.bfloat16(a.centroids), b.centroids)
        names = sum(len(wire._names_and_shapes(n, a.dtype, a.shape)) for n, a in update.items())
        # an empty record is 4 bytes from its encoding byte on (encoding, kept, clusters, bits);
        # a centroid 4 bytes named, 2 keyed
        left_out = 4 * sum(rec.empty for rec in records)
        halves = 2 * sum(rec.centroids.size for rec in records)
        bitmap = -(-len(update) // 8)
        assert len(named) - len(keyed) == names - wire.DIGEST_BYTES - bitmap + left_out + halves


def test_the_layout_can_be_given_as_names_dtypes_and_shapes(rng):
    update = model_update(rng)
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(update)
    layout = [(name, a.dtype, a.shape) for name, a in update.items()]
    assert wire.layout_of(layout) == wire.layout_of(update)
    assert list(fedzip.decode(payload, layout=layout)) == list(update)
    assert fedzip.inspect(payload, layout=update).version == wire.KEYED


def test_without_the_layout_a_keyed_payload_says_how_to_decode_it(rng):
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(model_update(rng))
    with pytest.raises(ValueError, match="layout= the model's arrays") as info:
        fedzip.decode(payload)
    assert not isinstance(info.value, fedzip.FormatError)


@pytest.mark.parametrize(
    "change",
    [
        lambda u: {**u, "scale": u["scale"].astype(np.float64)},  # a dtype
        lambda u: {**u, "features.0.bn.weight": np.zeros(17, np.float32)},  # a shape
        lambda u: {("x" + k if k == "scale" else k): v for k, v in u.items()},  # a name
        lambda u: dict(reversed(list(u.items()))),  # the order
        lambda u: {k: v for k, v in u.items() if k != "scale"},  # one tensor fewer
    ],
)
def test_a_keyed_payload_refuses_another_models_layout(rng, change):
    update = model_update(rng)
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(update)
    with pytest.raises(fedzip.FormatError, match="another model"):
        fedzip.decode(payload, layout=change(update))


def test_a_named_payload_ignores_the_layout(rng):
    update = model_update(rng)
    payload = fedzip.FedZip(keep=0.1).encode(update)
    other = {"unrelated": np.zeros(3, np.float32)}
    assert list(fedzip.decode(payload, layout=other)) == list(update)


def test_a_layout_with_a_dtype_the_format_cannot_name_is_a_value_error(rng):
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(model_update(rng))
    with pytest.raises(ValueError, match="no code in the format"):
        fedzip.decode(payload, layout={"counter": np.zeros(3, np.complex64)})


def test_every_truncation_and_mutation_of_a_keyed_payload_fails_cleanly(rng):
    update = model_update(rng)
    payload = fedzip.FedZip(keep=0.05, clusters=4, known_layout=True).encode(update)
    for end in range(len(payload)):
        with pytest.raises(fedzip.FormatError):
            fedzip.decode(payload[:end], layout=update)
    body = payload[:-4]
    for _ in range(1000):
        data = bytearray(body)
        data[rng.integers(5, len(data))] = rng.integers(256)
        try:  # behind a valid checksum: fails cleanly or has the layout's shapes
            out = fedzip.decode(bytes(data) + struct.pack("<I", zlib.crc32(bytes(data))), layout=update)
        except fedzip.FormatError:
            continue
        assert [(k, v.shape, v.dtype) for k, v in out.items()] == [
            (k, v.shape, v.dtype) for k, v in update.items()
        ]


def test_the_option_is_part_of_the_config_and_checked():
    codec = fedzip.FedZip(budget_ratio=1000, known_layout=True)
    assert codec.get_config()["known_layout"] is True
    assert fedzip.get_compressor(codec.get_config()) == codec
    with pytest.raises(ValueError, match="known_layout must be True or False"):
        fedzip.FedZip(known_layout="yes")


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16), budget=st.integers(150, 20_000), split=st.sampled_from(["error", "uniform"])
)
def test_a_keyed_budget_is_never_exceeded_and_spends_the_names_bytes(seed, budget, split):
    rng = np.random.default_rng(seed)
    update = model_update(rng)
    options = (
        {"budget_bytes": budget}
        if split == "error"
        else {"budget_bytes": budget, "budget_split": split, "clusters": 3}
    )
    try:
        keyed = fedzip.FedZip(**options, known_layout=True).encode(update)
    except ValueError:  # below the smallest keyed payload
        return
    assert len(keyed) <= budget
    fedzip.decode(keyed, layout=update)


def test_on_a_small_model_only_the_keyed_container_fits_a_thousandth(rng):
    """Sixty tensors of 4,096 parameters each: their names alone exceed 1000x's budget."""
    update = {f"blocks.{i}.body.{j}.weight": heavy_tailed(rng, (64, 64)) for i in range(15) for j in range(4)}
    codec = fedzip.FedZip(budget_ratio=1000)
    with pytest.raises(ValueError, match=r"below the smallest payload.*known_layout=True leaves"):
        codec.encode(update)
    keyed = fedzip.FedZip(budget_ratio=1000, known_layout=True).encode(update)
    with pytest.raises(ValueError, match="below the smallest payload") as refused:
        fedzip.FedZip(budget_bytes=20, known_layout=True).encode(update)
    assert "known_layout" not in str(refused.value)  # it is already keyed: no such hint
    assert len(keyed) <= sum(a.nbytes for a in update.values()) // 1000
    restored = fedzip.decode(keyed, layout=update)
    assert any(np.count_nonzero(v) for v in restored.values())


def _every_record(payload: bytes, layout) -> bytes:
    """``payload`` as version 2 wrote it: every record, the empty ones too, no bitmap, float32
    centroids."""
    out = bytearray(wire.MAGIC) + bytes([wire.KEYED_EVERY_RECORD]) + wire.digest(wire.layout_of(layout))
    out += wire._varint(len(layout))
    for rec in wire.read(payload, layout=layout):
        if rec.encoding == wire.ABSENT:
            out += bytes([3, 0, 0, 0])  # dap, nothing kept, no centroids, no body
            continue
        out += bytes([rec.encoding]) + wire._varint(rec.kept) + wire._varint(rec.centroids.size)
        out += rec.centroids.astype("<f4").tobytes() + wire._varint(rec.body_bits) + rec.body
    return bytes(out + struct.pack("<I", zlib.crc32(bytes(out))))


def test_tensors_that_carry_nothing_are_left_out_and_decode_to_zeros(rng):
    update = model_update(rng)
    update["features.0.bn.weight"] = np.zeros(16, np.float32)
    update["nothing"] = np.zeros((3, 0), np.float32)
    codec = fedzip.FedZip(budget_bytes=120, known_layout=True)
    payload = codec.encode(update)
    assert len(payload) <= 120
    records = wire.read(payload, layout=update)
    absent = [rec.name for rec in records if rec.encoding == wire.ABSENT]
    assert {"features.0.bn.weight", "nothing"} <= set(absent)
    restored = fedzip.decode(payload, layout=update)
    expected = codec.approximate(update)
    for name in update:
        assert restored[name].dtype == update[name].dtype and restored[name].shape == update[name].shape
        np.testing.assert_array_equal(restored[name], expected[name])
    for name in absent:
        assert not restored[name].any()
    report = fedzip.inspect(payload, layout=update)
    left = [t for t in report.tensors if t.name in absent]
    assert all(t.encoding == "none" and t.form == "left out" and t.total_bits == 0 for t in left)
    # what they would have cost, 4 bytes each, is not spent on them
    bitmap = -(-len(update) // 8)
    halves = 2 * sum(rec.centroids.size for rec in records)
    assert len(_every_record(payload, update)) - len(payload) == 4 * len(absent) - bitmap + halves


def test_a_version_2_payload_decodes_as_it_did(rng):
    update = model_update(rng)
    update["features.0.bn.weight"] = np.zeros(16, np.float32)
    payload = fedzip.FedZip(keep=0.05, known_layout=True).encode(update)
    old = _every_record(payload, update)
    assert wire.is_keyed(old) and fedzip.inspect(old, layout=update).version == wire.KEYED_EVERY_RECORD
    restored, before = fedzip.decode(payload, layout=update), fedzip.decode(old, layout=update)
    assert all(np.array_equal(restored[k], v) for k, v in before.items())
    halves = 2 * sum(rec.centroids.size for rec in wire.read(payload, layout=update))
    assert len(old) == len(payload) - 1 + 4 + halves  # no bitmap, the zero tensor's record, float32


def test_a_model_of_many_tensors_that_carry_nothing_fits_a_few_bytes():
    update = {f"t{i}": np.zeros(10, np.float32) for i in range(1000)}
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(update)
    assert len(payload) == wire.container_bytes(1000, keyed=True) == 4 + 1 + 8 + 2 + 125 + 4
    assert not any(v.any() for v in fedzip.decode(payload, layout=update).values())


def test_a_bitmap_past_the_tensor_count_or_cut_short_is_a_format_error(rng):
    update = {"a": heavy_tailed(rng, (40,)), "b": np.zeros(5, np.float32), "c": heavy_tailed(rng, (7,))}
    payload = fedzip.FedZip(keep=0.5, known_layout=True).encode(update)
    at = len(wire.MAGIC) + 1 + wire.DIGEST_BYTES + 1  # the bitmap's byte
    assert payload[at] == 0b101

    def reseal(data: bytes) -> bytes:
        return data + struct.pack("<I", zlib.crc32(data))

    body = payload[:-4]
    with pytest.raises(fedzip.FormatError, match="past the tensor count"):
        fedzip.decode(reseal(body[:at] + bytes([0b1101]) + body[at + 1 :]), layout=update)
    with pytest.raises(fedzip.FormatError):  # b marked present: c's record read as b's
        fedzip.decode(reseal(body[:at] + bytes([0b111]) + body[at + 1 :]), layout=update)
    with pytest.raises(fedzip.FormatError, match="unexpected bytes"):  # c left out: a record too many
        fedzip.decode(reseal(body[:at] + bytes([0b001]) + body[at + 1 :]), layout=update)


def test_bfloat16_rounds_to_nearest_even_and_stays_finite():
    values = np.array(
        [1.0, 1 + 2**-8, 1 + 2**-8 + 2**-20, 1 + 3 * 2**-8, -2.5e-7, 0.0, -0.0, 3.4e38, -3.4e38, 1e-40],
        dtype=np.float32,
    )
    rounded = wire.bfloat16(values)
    assert not np.any(rounded.view(np.uint32) & 0xFFFF)
    # 1 + 2^-8 is halfway: ties go to the even neighbour (1.0); just above it goes up; 1 + 3 * 2^-8
    # is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
    np.testing.assert_array_equal(rounded[:4], np.float32([1.0, 1.0, 1 + 2**-7, 1 + 2**-6]))
    assert np.all(np.isfinite(rounded)) and rounded[7] > 3e38 and rounded[8] < -3e38
    assert np.signbit(rounded[6]) and rounded[5] == 0
    finite = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e-3
    assert np.max(np.abs(wire.bfloat16(finite) - finite) / np.abs(finite)) <= 2**-8


def test_fedzip_centroids_are_bfloat16_and_a_keyed_payload_sends_two_bytes_each(rng):
    update = model_update(rng)
    for options in ({"keep": 0.05, "clusters": 16}, {"rank": 2}, {"budget_ratio": 20}):
        codec = fedzip.FedZip(**options, known_layout=True)
        payload = codec.encode(update)
        records = wire.read(payload, layout=update)
        assert all(rec.centroid_bytes == 2 for rec in records)
        centroids = np.concatenate([rec.centroids for rec in records])
        assert centroids.size and np.array_equal(wire.bfloat16(centroids), centroids)
        report = fedzip.inspect(payload, layout=update)
        assert sum(t.centroid_bits for t in report.tensors) == 16 * centroids.size
        assert report.total_bytes == len(payload)


def test_records_whose_centroids_are_not_bfloat16_are_written_as_version_2_unchanged(rng):
    update = model_update(rng)
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(update)
    records = wire.read(payload, layout=update)
    exact = [
        rec if not rec.centroids.size else replace(rec, centroids=rec.centroids + np.float32(2**-20))
        for rec in records
    ]
    written = wire.write(exact, keyed=True)
    assert written[len(wire.MAGIC)] == wire.KEYED_EVERY_RECORD
    again = wire.read(written, layout=update)
    assert all(np.array_equal(a.centroids, b.centroids) for a, b in zip(exact, again, strict=True))


@pytest.mark.parametrize("options", [{"budget_bytes": 160}, {"rank": 2, "clusters": 3}])
def test_a_keyed_payload_transcodes_to_the_same_arrays_with_its_left_out_tensors_and_factors(rng, options):
    update = model_update(rng)
    update["features.0.bn.weight"] = np.zeros(16, np.float32)
    payload = fedzip.FedZip(**options, known_layout=True).encode(update)
    assert wire.ABSENT in {rec.encoding for rec in wire.read(payload, layout=update)}
    before = fedzip.decode(payload, layout=update)
    for encoding in ("huffman", "position", "dap"):
        other = fedzip.transcode(payload, encoding, layout=update)
        assert other[len(wire.MAGIC)] == wire.KEYED
        after = fedzip.decode(other, layout=update)
        assert all(np.array_equal(before[k], v) for k, v in after.items())


def test_a_left_out_tensor_cannot_be_written_where_every_tensor_has_a_record(rng):
    update = model_update(rng)
    update["features.0.bn.weight"] = np.zeros(16, np.float32)
    payload = fedzip.FedZip(keep=0.1, known_layout=True).encode(update)
    records = wire.read(payload, layout=update)
    with pytest.raises(ValueError, match="left out of a keyed container: version 1"):
        wire.write(records)
    off = [
        replace(rec, centroids=rec.centroids + np.float32(2**-20)) if rec.centroids.size else rec
        for rec in records
    ]
    with pytest.raises(ValueError, match="version 2 has no record"):
        wire.write(off, keyed=True)
