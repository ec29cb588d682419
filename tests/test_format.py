"""Malformed payloads raise FormatError, never another exception, never hang."""

import struct
import zlib

import numpy as np
import pytest

import fedzip
from conftest import heavy_tailed
from fedzip import wire


@pytest.fixture(scope="module")
def payloads():
    rng = np.random.default_rng(7)
    update = {
        "conv": heavy_tailed(rng, (16, 3, 3, 3)),
        "bias": heavy_tailed(rng, (16,)),
        "fc": heavy_tailed(rng, (64, 40), np.float16),
        "s": np.asarray(1.5, np.float64),
    }
    return {
        e: fedzip.FedZip(keep=0.05, clusters=4, encoding=e).encode(update)
        for e in ("huffman", "position", "dap")
    }


def reseal(body: bytes) -> bytes:
    """A payload with a valid checksum around arbitrary content."""
    return body + struct.pack("<I", zlib.crc32(body))


def expect_format_error(payload, **kwargs):
    with pytest.raises(fedzip.FormatError):
        fedzip.decode(payload, **kwargs)


def test_format_error_is_a_value_error():
    assert issubclass(fedzip.FormatError, ValueError)


@pytest.mark.parametrize("encoding", ["huffman", "position", "dap"])
def test_every_truncation_fails(payloads, encoding):
    payload = payloads[encoding]
    for length in range(len(payload)):
        expect_format_error(payload[:length])
    expect_format_error(payload + b"\x00")


@pytest.mark.parametrize("encoding", ["huffman", "position", "dap"])
def test_random_mutations_fail(payloads, encoding):
    payload = payloads[encoding]
    rng = np.random.default_rng(1)
    for _ in range(1500):
        data = bytearray(payload)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] ^= 1 << rng.integers(8)
        if bytes(data) != payload:  # two flips of one bit cancel out
            expect_format_error(bytes(data))


@pytest.mark.parametrize("encoding", ["huffman", "position", "dap"])
def test_mutations_behind_a_valid_checksum_fail_cleanly(payloads, encoding):
    """Corruption the checksum cannot see: decoding fails cleanly or yields the declared shapes."""
    body = payloads[encoding][:-4]
    reference = fedzip.decode(payloads[encoding])
    rng = np.random.default_rng(2)
    for _ in range(1500):
        data = bytearray(body)
        position = rng.integers(5, len(data))
        data[position] = rng.integers(256)
        try:
            out = fedzip.decode(reseal(bytes(data)), max_elements=10**6)
        except fedzip.FormatError:
            continue
        for name, value in out.items():
            assert isinstance(value, np.ndarray)
            if name in reference:
                assert value.size <= 10**6


def test_random_bytes_fail():
    rng = np.random.default_rng(3)
    for size in [*list(range(12)), 100, 1000, 10000]:
        for _ in range(20):
            expect_format_error(rng.bytes(size))
            expect_format_error(reseal(b"FZIP\x01" + rng.bytes(size)))


def test_not_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        fedzip.decode("FZIP")


def record(**fields):
    base = dict(
        name="w",
        dtype=np.dtype(np.float32),
        shape=(10,),
        encoding=3,
        kept=2,
        centroids=np.array([1.0], np.float32),
        body_bits=0,
        body=b"",
    )
    base.update(fields)
    return wire.Record(**base)


@pytest.mark.parametrize(
    "rec",
    [
        record(encoding=99),
        record(kept=11),
        record(centroids=np.zeros(0, np.float32)),
        record(centroids=np.zeros(300, np.float32), kept=10, shape=(400,)),
        record(centroids=np.array([np.nan], np.float32)),
        record(body_bits=7, body=b"\xff"),  # body says less than it needs
        record(body_bits=3, body=b"\x00"),
    ],
)
def test_fields_out_of_range_fail(rec):
    expect_format_error(wire.write([rec]))


def test_header_fields_out_of_range_fail():
    good = wire.write([record(kept=0, centroids=np.zeros(0, np.float32))])
    assert fedzip.decode(good)["w"].shape == (10,)
    body = bytearray(good[:-4])
    expect_format_error(reseal(b"FZIP\x04" + bytes(body[5:])))  # unsupported version
    expect_format_error(reseal(bytes(body[:5]) + b"\x05" + bytes(body[6:])))  # more tensors than present
    dtype_at = 5 + 1 + 1 + 1
    bad = bytearray(body)
    bad[dtype_at] = 9
    expect_format_error(reseal(bytes(bad)))
    bad = bytearray(body)
    bad[dtype_at + 1] = 200  # ndim
    expect_format_error(reseal(bytes(bad)))
    duplicate = wire.write([record(kept=0, centroids=np.zeros(0, np.float32))] * 2)
    expect_format_error(duplicate)
    bad_name = wire.write([record(name="w", kept=0, centroids=np.zeros(0, np.float32))])
    bad_name = bytearray(bad_name[:-4])
    bad_name[7] = 0xFF  # not UTF-8
    expect_format_error(reseal(bytes(bad_name)))
    overlong_varint = bytearray(body[:5]) + b"\xff" * 12
    expect_format_error(reseal(bytes(overlong_varint)))


def test_a_header_that_declares_more_than_the_buffer_holds():
    rec = record(body_bits=10**9, body=b"")
    payload = bytearray(wire.write([rec]))
    expect_format_error(bytes(payload))


def test_max_elements_refuses_a_decompression_bomb():
    huge = wire.write([record(shape=(10**6, 10**6), kept=0, centroids=np.zeros(0, np.float32))])
    expect_format_error(huge, max_elements=10**7)
    two = fedzip.FedZip(keep=1.0).encode({"a": np.ones(600, np.float32), "b": np.ones(600, np.float32)})
    expect_format_error(two, max_elements=1000)
    assert len(fedzip.decode(two, max_elements=1200)) == 2


def test_huge_declared_tensor_without_limit_is_a_format_error_not_memory_error():
    bomb = wire.write([record(shape=(2**62,), kept=0, centroids=np.zeros(0, np.float32))])
    expect_format_error(bomb)


def test_a_constant_huffman_tensor_of_absurd_size_is_a_format_error():
    # one Huffman symbol for every entry costs no bits, so only the declared size stands in the way
    from fedzip.bitio import BitWriter

    body = BitWriter()
    body.write(1, 1)  # single symbol
    body.write(0, 1)  # symbol 0: pruned
    rec = record(
        shape=(2**50,),
        encoding=1,
        kept=0,
        centroids=np.zeros(0, np.float32),
        body_bits=2,
        body=body.getvalue(),
    )
    expect_format_error(wire.write([rec]))
    expect_format_error(wire.write([rec]), max_elements=10**9)
