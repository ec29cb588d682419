import numpy as np
import pytest

import fedzip
from conftest import heavy_tailed


def test_residual_is_what_the_payload_dropped(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip(keep=0.05, clusters=3))
    u1 = {"w": heavy_tailed(rng, (50, 40))}
    sent1 = fedzip.decode(ef.encode(u1))
    np.testing.assert_allclose(ef.residual["w"], u1["w"] - sent1["w"], atol=1e-7)
    u2 = {"w": heavy_tailed(rng, (50, 40))}
    sent2 = fedzip.decode(ef.encode(u2))
    expected = fedzip.FedZip(keep=0.05, clusters=3).approximate({"w": u2["w"] + (u1["w"] - sent1["w"])})
    assert np.array_equal(sent2["w"], expected["w"])


def test_nothing_is_lost_over_many_rounds(rng):
    """With feedback, the sum of what was sent tracks the sum of the updates."""
    codec = fedzip.FedZip(keep=0.02, clusters=3)
    ef = fedzip.ErrorFeedback(codec)
    direction = heavy_tailed(rng, (40, 50))
    total_sent = np.zeros_like(direction)
    total_plain = np.zeros_like(direction)
    for _ in range(60):
        total_sent += fedzip.decode(ef.encode({"w": direction}))["w"]
        total_plain += codec.approximate({"w": direction})["w"]
    target = 60 * direction
    error_with = np.linalg.norm(total_sent - target)
    error_without = np.linalg.norm(total_plain - target)
    assert error_with < 0.35 * error_without
    np.testing.assert_allclose(total_sent + ef.residual["w"], target, rtol=1e-4, atol=1e-4)


def test_shape_change_is_an_error_until_reset(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip())
    ef.encode({"w": np.ones((4, 4), np.float32)})
    with pytest.raises(ValueError, match="reset"):
        ef.encode({"w": np.ones((5, 4), np.float32)})
    ef.reset()
    ef.encode({"w": np.ones((5, 4), np.float32)})


def test_dtype_is_kept(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip())
    for _ in range(2):
        out = fedzip.decode(ef.encode({"w": heavy_tailed(rng, (8, 8), np.float16)}))
        assert out["w"].dtype == np.float16
        assert ef.residual["w"].dtype == np.float16
