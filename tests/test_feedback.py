from itertools import pairwise

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


@pytest.mark.parametrize(
    "codec",
    [
        fedzip.FedZip(keep=0.05, clusters=3),
        fedzip.get_compressor({"id": "stc", "keep": 0.05}),
        fedzip.get_compressor({"id": "topk", "keep": 0.05}),
        fedzip.get_compressor({"id": "signsgd"}),
        fedzip.get_compressor({"id": "qsgd"}),
        fedzip.get_compressor({"id": "lowrank", "clusters": 3}),
    ],
    ids=lambda c: c.codec_id,
)
def test_in_place_residual_equals_the_out_of_place_definition(rng, codec):
    """residual' = (update + residual) - decode(payload), exactly, for every compressor."""
    ef = fedzip.ErrorFeedback(codec)
    previous = {"w": np.zeros((30, 20), np.float32), "b": np.zeros(20, np.float32)}
    for _ in range(3):
        update = {"w": heavy_tailed(rng, (30, 20)), "b": heavy_tailed(rng, (20,))}
        before = {k: v.copy() for k, v in update.items()}
        payload = ef.encode(update)
        sent = fedzip.decode(payload)
        for name in update:
            assert np.array_equal(update[name], before[name]), "the caller's update was modified"
            corrected = (before[name] + previous[name]).astype(np.float32)
            assert np.array_equal(ef.residual[name], corrected - sent[name])
        previous = {k: v.copy() for k, v in ef.residual.items()}


def test_a_bad_update_leaves_the_residual_untouched(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip(keep=0.1))
    ef.encode({"w": heavy_tailed(rng, (10, 10)), "v": heavy_tailed(rng, (10, 10))})
    kept = {k: v.copy() for k, v in ef.residual.items()}
    bad = {"w": heavy_tailed(rng, (10, 10)), "v": np.full((10, 10), np.nan, np.float32)}
    with pytest.raises(ValueError, match="NaN"):
        ef.encode(bad)
    assert all(np.array_equal(ef.residual[k], kept[k]) for k in kept)


def test_encode_subtract_needs_arrays_it_can_write(rng):
    frozen = heavy_tailed(rng, (10, 10))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        fedzip.FedZip().encode_subtract({"w": frozen})
    with pytest.raises(ValueError, match="contiguous"):
        fedzip.FedZip().encode_subtract({"w": np.asfortranarray(heavy_tailed(rng, (10, 10)))})


def test_steady_state_encoding_allocates_far_less_than_the_update(rng):
    """After the first round, encoding with feedback works in the residual's memory."""
    import tracemalloc

    # 24 MB: k-means' fixed few MB of working space stays small beside it
    update = {"w": heavy_tailed(rng, (3000, 2000))}
    ef = fedzip.ErrorFeedback(fedzip.FedZip(keep=0.01))
    ef.encode(update)
    tracemalloc.start()
    try:
        ef.encode(update)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * update["w"].nbytes


def test_momentum_correction_identity_and_factor_masking(rng):
    """u' = m u + g; v' = v + u'; both zeroed where the payload sent something (DGC)."""
    codec = fedzip.FedZip(keep=0.05, clusters=3)
    ef = fedzip.ErrorFeedback(codec, momentum=0.9)
    u = {"w": np.zeros((30, 20), np.float32)}
    v = {"w": np.zeros((30, 20), np.float32)}
    for _ in range(4):
        g = {"w": heavy_tailed(rng, (30, 20))}
        sent = fedzip.decode(ef.encode(g))["w"]
        mask = sent != 0
        assert mask.any()
        u_expected = (0.9 * u["w"] + g["w"]).astype(np.float32)
        v_expected = (v["w"] + u_expected).astype(np.float32)
        np.testing.assert_allclose(ef.velocity["w"][~mask], u_expected[~mask], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ef.residual["w"][~mask], v_expected[~mask], rtol=1e-6, atol=1e-7)
        assert not ef.velocity["w"][mask].any() and not ef.residual["w"][mask].any()
        # what was sent is what top-k of the corrected residual gives
        assert np.array_equal(sent, codec.approximate({"w": v_expected})["w"])
        u, v = {"w": ef.velocity["w"].copy()}, {"w": ef.residual["w"].copy()}


def test_momentum_without_masking_keeps_the_quantisation_error(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip(keep=0.05), momentum=0.5, masking=False)
    g = {"w": heavy_tailed(rng, (30, 20))}
    sent = fedzip.decode(ef.encode(g))["w"]
    np.testing.assert_allclose(ef.residual["w"], g["w"] - sent, atol=1e-7)
    assert np.array_equal(ef.velocity["w"], g["w"])


def test_clipping_bounds_what_is_accumulated(rng):
    ef = fedzip.ErrorFeedback(fedzip.FedZip(keep=1.0, clusters=256), clip_norm=0.5)
    g = {"w": heavy_tailed(rng, (30, 20), scale=1.0), "b": heavy_tailed(rng, (20,), scale=1.0)}
    sent = fedzip.decode(ef.encode(g))
    total = {k: sent[k] + ef.residual[k] for k in g}
    norm = np.sqrt(sum(float((t.astype(np.float64) ** 2).sum()) for t in total.values()))
    assert norm == pytest.approx(0.5, rel=1e-4)
    small = {"w": np.full((30, 20), 1e-4, np.float32)}
    fedzip.ErrorFeedback(fedzip.FedZip(), clip_norm=0.5).encode(small)  # under the bound: untouched


@pytest.mark.parametrize("options", [{"momentum": 1.0}, {"momentum": -0.1}, {"clip_norm": 0}])
def test_bad_feedback_options(options):
    with pytest.raises(ValueError):
        fedzip.ErrorFeedback(fedzip.FedZip(), **options)


def test_warm_up_schedules_reach_their_target():
    from fedzip.schedule import KeepWarmup

    dgc = KeepWarmup(rounds=4, start=0.25)
    keeps = [dgc.keep(r, 0.001) for r in range(1, 8)]
    assert keeps[:4] == pytest.approx([0.25, 0.25 * 0.004**0.25, 0.25 * 0.004**0.5, 0.25 * 0.004**0.75])
    assert keeps[4:] == [0.001] * 3
    assert all(a > b for a, b in pairwise(keeps[:5]))
    linear = KeepWarmup(rounds=2, start=0.5, kind="linear")
    assert [linear.keep(r, 0.1) for r in (1, 2, 3)] == pytest.approx([0.5, 0.3, 0.1])
    assert (
        KeepWarmup(steps=(0.5, 0.2)).keep(2, 0.01) == 0.2 and KeepWarmup(steps=(0.5,)).keep(2, 0.01) == 0.01
    )
    assert KeepWarmup(rounds=3, start=0.001).keep(1, 0.01) == 0.01  # never below the target
    assert dgc.config(1, {"id": "stc", "keep": 0.0025})["keep"] == 0.25
    assert dgc.config(1, {"id": "fedzip", "budget_bytes": 1000})["budget_bytes"] == 16000
    assert dgc.config(5, {"id": "fedzip", "budget_bytes": 1000})["budget_bytes"] == 1000
    with pytest.raises(ValueError, match="keep or a budget"):
        dgc.config(1, {"id": "signsgd"})
    with pytest.raises(ValueError):
        KeepWarmup(kind="cosine")


def test_a_stale_residual_decays_with_its_age_and_is_dropped_past_max_age(rng):
    codec = fedzip.FedZip(keep=0.1)
    first = {"w": heavy_tailed(rng, (40, 30))}
    sender = fedzip.ErrorFeedback(codec, age_decay=0.5, max_age=3)
    sender.encode(first, server_round=2)
    kept = sender.residual["w"].copy()
    assert sender.made == 2 and sender.age(5) == 3
    second = {"w": heavy_tailed(rng, (40, 30))}
    payload = sender.encode(second, server_round=5)  # age 3: scaled by 0.25
    carried = {"w": second["w"] + 0.25 * kept}
    assert payload == codec.encode(carried)
    third = {"w": heavy_tailed(rng, (40, 30))}
    assert sender.encode(third, server_round=9) == codec.encode(third)  # age 4 > max_age 3: dropped
    assert sender.made == 9


def test_a_residual_seen_every_round_or_without_rounds_is_not_scaled(rng):
    codec = fedzip.FedZip(keep=0.1)
    updates = [{"w": heavy_tailed(rng, (40, 30))} for _ in range(3)]
    plain, aged = fedzip.ErrorFeedback(codec), fedzip.ErrorFeedback(codec, age_decay=0.5, max_age=1)
    for server_round, update in enumerate(updates, 1):  # age 1 every time
        assert aged.encode(update, server_round) == plain.encode(update)


def test_step_ahead_previews_part_of_the_aged_residual_and_sends_the_whole_of_it(rng):
    """preview() is step_ahead times the residual aged for the round; encode() then adds the whole
    residual to the update, aged once (not again for the same round)."""
    codec = fedzip.FedZip(keep=0.1)
    sender = fedzip.ErrorFeedback(codec, age_decay=0.5, step_ahead=0.25)
    assert sender.preview(1) == {}  # nothing to preview yet
    sender.encode({"w": heavy_tailed(rng, (40, 30))}, server_round=1)
    kept = sender.residual["w"].copy()
    shift = sender.preview(3)  # age 2: the residual is halved, a quarter of that previewed
    np.testing.assert_allclose(shift["w"], 0.25 * 0.5 * kept, rtol=1e-6)
    assert shift["w"].dtype == kept.dtype
    update = {"w": heavy_tailed(rng, (40, 30))}
    payload = sender.encode(update, server_round=3)
    assert payload == codec.encode({"w": update["w"] + 0.5 * kept})
    plain = fedzip.ErrorFeedback(codec)
    assert plain.preview(1) == {}


@pytest.mark.parametrize(
    "options",
    [
        {"age_decay": 0},
        {"age_decay": 1.5},
        {"max_age": 0},
        {"max_age": 2.5},
        {"step_ahead": -0.1},
        {"step_ahead": 2},
    ],
)
def test_bad_age_options(options):
    with pytest.raises(ValueError):
        fedzip.ErrorFeedback(fedzip.FedZip(), **options)
