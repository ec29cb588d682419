import numpy as np
import pytest

from fedzip.bitio import BitReader, BitWriter, bits_of, unary_bits, varbits_of
from fedzip.errors import FormatError


def test_fixed_width_round_trip_at_odd_offsets(rng):
    values = rng.integers(0, 1 << 37, size=1000, dtype=np.uint64)
    w = BitWriter()
    w.write(5, 3)  # misalign everything after it
    w.write_array(values, 37)
    w.write(1, 1)
    reader = BitReader(w.getvalue(), w.nbits)
    assert reader.read(3) == 5
    assert np.array_equal(reader.read_array(1000, 37), values)
    assert reader.read(1) == 1
    assert reader.remaining == 0


def test_variable_width_and_unary_round_trip(rng):
    widths = rng.integers(0, 60, size=500)
    values = np.array([int(rng.integers(0, 1 << int(b))) if b else 0 for b in widths], dtype=np.uint64)
    quotients = rng.integers(0, 20, size=300)
    w = BitWriter()
    w.write_bits(varbits_of(values, widths))
    w.write_bits(unary_bits(quotients))
    w.write(0b1011, 4)
    reader = BitReader(w.getvalue(), w.nbits)
    assert np.array_equal(reader.read_varbits(widths), values)
    assert np.array_equal(reader.read_unary(300), quotients)
    assert reader.read(4) == 0b1011


def test_bits_are_msb_first():
    assert bits_of(np.array([0b110]), 3).tolist() == [1, 1, 0]
    w = BitWriter()
    w.write(0b1, 1)
    w.write(0b0000001, 7)
    assert w.getvalue() == bytes([0b10000001])


def test_reads_past_the_end_raise_format_error():
    reader = BitReader(b"\xff", 8)
    reader.read(6)
    with pytest.raises(FormatError):
        reader.read(3)
    with pytest.raises(FormatError):
        reader.read_array(2, 2)
    with pytest.raises(FormatError):
        BitReader(b"\x00", 9)
    with pytest.raises(FormatError):
        BitReader(b"\x00", 8).read_unary(1)


def test_unary_codes_end_at_the_declared_length():
    # The one that would end the code is in the data but past the stream's last bit.
    with pytest.raises(FormatError, match="1 found"):
        BitReader(b"\x41", 7).read_unary(2)
    reader = BitReader(b"\x41", 8)
    assert reader.read_unary(2).tolist() == [1, 5]
    assert reader.remaining == 0


def test_long_unary_runs_at_an_odd_offset():
    quotients = np.array([0, 5000, 3, 0, 12000, 1])
    w = BitWriter()
    w.write(0b101, 3)
    w.write_bits(unary_bits(quotients))
    w.write(0b111, 3)
    reader = BitReader(w.getvalue(), w.nbits)
    assert reader.read(3) == 0b101
    assert np.array_equal(reader.read_unary(quotients.size), quotients)
    assert reader.read(3) == 0b111


def test_writer_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        BitWriter().write(8, 3)


def test_read_flags_matches_single_bit_reads():
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2, size=1000).astype(np.uint8)
    writer = BitWriter()
    writer.write_bits(bits)
    for start in (0, 3, 8, 13):
        for count in (0, 1, 7, 64, 500):
            reader = BitReader(writer.getvalue(), writer.nbits)
            reader.read_array(start, 1)
            flags = reader.read_flags(count)
            assert flags.dtype == bool and np.array_equal(flags, bits[start : start + count].astype(bool))
            assert reader.pos == start + count
    reader = BitReader(writer.getvalue(), writer.nbits)
    with pytest.raises(FormatError):
        reader.read_flags(1001)
