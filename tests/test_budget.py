"""FedZip with a byte budget: never over it, and spent where the squared error drops most."""

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fedzip
from conftest import heavy_tailed
from fedzip.budget import _hull, allocate
from fedzip.candidates import tensor_options


def squared_error(update, restored):
    return sum(float(((update[k].astype(np.float64) - restored[k]) ** 2).sum()) for k in update)


def model_update(rng):
    return {
        "conv.weight": heavy_tailed(rng, (16, 8, 3, 3), scale=0.05),
        "conv.bias": heavy_tailed(rng, (16,)),
        "dense.weight": heavy_tailed(rng, (400, 64)),
        "dense.bias": heavy_tailed(rng, (64,)),
    }


@settings(max_examples=25)
@given(seed=st.integers(0, 2**16), budget=st.integers(700, 40_000), encoding=st.sampled_from(["dap", "auto"]))
def test_the_payload_never_exceeds_the_budget_and_decodes(seed, budget, encoding):
    rng = np.random.default_rng(seed)
    update = model_update(rng)
    codec = fedzip.FedZip(budget_bytes=budget, encoding=encoding)
    payload = codec.encode(update)
    assert len(payload) <= budget
    restored = fedzip.decode(payload)
    expected = codec.approximate(update)
    assert all(np.array_equal(restored[k], expected[k]) for k in update)
    assert all(restored[k].shape == update[k].shape for k in update)


def test_more_budget_never_means_more_error(rng):
    update = model_update(rng)
    errors = [
        squared_error(update, fedzip.decode(fedzip.FedZip(budget_bytes=b).encode(update)))
        for b in (800, 1500, 3000, 6000, 12000, 24000)
    ]
    assert all(later <= earlier for earlier, later in pairwise(errors))
    assert errors[-1] < 0.5 * errors[0]


def test_at_the_same_bytes_the_budget_beats_a_fixed_keep(rng):
    update = model_update(rng)
    for keep in (0.003, 0.01, 0.05):
        fixed = fedzip.FedZip(keep=keep).encode(update)
        budgeted = fedzip.FedZip(budget_bytes=len(fixed)).encode(update)
        assert len(budgeted) <= len(fixed)
        assert squared_error(update, fedzip.decode(budgeted)) <= squared_error(update, fedzip.decode(fixed))


def test_bytes_go_to_the_tensor_where_they_remove_most_error(rng):
    loud = heavy_tailed(rng, (200, 50), scale=1.0)
    quiet = heavy_tailed(rng, (200, 50), scale=0.001)
    report = fedzip.inspect(fedzip.FedZip(budget_bytes=3000).encode({"loud": loud, "quiet": quiet}))
    kept = {t.name: t.kept for t in report.tensors}
    assert kept["loud"] > 20 * kept["quiet"]


def test_allocation_follows_the_convex_hulls():
    rng = np.random.default_rng(3)
    options = {
        "a": tensor_options("a", heavy_tailed(rng, (100, 40)), True, "dap"),
        "b": tensor_options("b", heavy_tailed(rng, (100, 40), scale=0.1), True, "dap"),
    }
    for front in options.values():
        sizes, errors = [o.record_bytes for o in front], [o.error for o in front]
        assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True)  # no candidate beaten
        hull = _hull(front)
        sizes = [o.record_bytes for o in hull]
        errors = [o.error for o in hull]
        assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True)
        slopes = [(errors[i] - errors[i + 1]) / (sizes[i + 1] - sizes[i]) for i in range(len(hull) - 1)]
        assert all(a >= b - 1e-12 for a, b in pairwise(slopes))  # convex
        assert _hull(list(reversed(hull))) == hull
    chosen = allocate(options, 2500)
    assert sum(o.record_bytes for o in chosen.values()) + 8 <= 2500


def test_a_budget_below_the_smallest_payload_says_so(rng):
    with pytest.raises(ValueError, match="budget_bytes=50 is below the smallest payload"):
        fedzip.FedZip(budget_bytes=50).encode(model_update(rng))


def test_budget_ratio_sets_the_budget_from_the_update_size(rng):
    update = model_update(rng)
    size = sum(a.nbytes for a in update.values())
    payload = fedzip.FedZip(budget_ratio=200).encode(update)
    assert len(payload) <= size / 200
    assert len(payload) > 0.8 * size / 200  # the budget is used, not wasted


@pytest.mark.parametrize(
    "options, message",
    [
        ({"budget_bytes": 0}, "budget_bytes"),
        ({"budget_bytes": 1.5}, "budget_bytes"),
        ({"budget_ratio": 0.5}, "budget_ratio"),
        ({"budget_bytes": 100, "budget_ratio": 10}, "not both"),
        ({"budget_bytes": 100, "budget_split": "even"}, "budget_split must be one of error, uniform"),
    ],
)
def test_bad_budgets_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        fedzip.FedZip(**options)


def test_config_round_trip_and_error_feedback(rng):
    codec = fedzip.FedZip(budget_bytes=2000, encoding="auto")
    assert fedzip.get_compressor(codec.get_config()) == codec
    sender = fedzip.ErrorFeedback(codec)
    update = model_update(rng)
    for _ in range(3):
        payload = sender.encode(update)
        assert len(payload) <= 2000
    corrected_total = 3 * sum(float(np.abs(a).sum()) for a in update.values())
    assert sum(float(np.abs(r).sum()) for r in sender.residual.values()) < corrected_total


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), budget=st.integers(700, 40_000))
@example(seed=749, budget=2782)  # bisection alone stopped one entry short (bytes are not monotone in keep)
def test_the_uniform_split_is_top_z_with_the_largest_keep_that_fits(seed, budget):
    """budget_split="uniform": the same kept fraction in every sparsified tensor, as FedZip(keep=...) would,
    and one more entry per tensor would not fit."""
    update = model_update(np.random.default_rng(seed))
    codec = fedzip.FedZip(budget_bytes=budget, budget_split="uniform", clusters=3)
    payload = codec.encode(update)
    assert len(payload) <= budget
    restored = fedzip.decode(payload)
    kept = {k: int(np.count_nonzero(restored[k])) for k in ("conv.weight", "dense.weight")}
    n, big, small = kept["dense.weight"], update["dense.weight"].size, update["conv.weight"].size
    # keep_count(big, keep) = n puts keep in ((n - 1) / big, n / big]: the smaller tensor follows it
    assert math.ceil((n - 1) / big * small) <= kept["conv.weight"] <= math.ceil(n / big * small)
    # a slightly larger keep would not have fitted
    if n < big:
        larger = fedzip.FedZip(keep=(n + 1) / big, clusters=3)
        assert len(larger.encode(update)) > budget


def test_the_uniform_split_round_trips_its_config(rng):
    codec = fedzip.FedZip(budget_ratio=300, budget_split="uniform")
    assert codec.get_config()["budget_split"] == "uniform"
    assert fedzip.get_compressor(codec.get_config()) == codec
    assert fedzip.get_compressor(fedzip.FedZip(budget_ratio=300).get_config()).budget_split == "error"


def forms(codec, update):
    return {name: option.form for name, option in codec.plan(update).items()}


def least_error_alone(update, budget):
    """The least squared error each representation reaches alone (top-z) or with Top-z for what it
    cannot send (factors), within ``budget`` bytes."""
    errors = {}
    for name, forms_ in (("top-z", ["top-z"]), ("factors", ["factors", "top-z"])):
        codec = fedzip.FedZip(budget_bytes=budget, representations=forms_)
        errors[name] = squared_error(update, fedzip.decode(codec.encode(update)))
    return errors


def test_the_budget_sends_a_rank_one_matrix_as_factors(rng):
    matrix = np.outer(rng.standard_normal(300), rng.standard_normal(80)).astype(np.float32)
    matrix += rng.standard_normal(matrix.shape).astype(np.float32) * 1e-3
    update = {"w": matrix}
    codec = fedzip.FedZip(budget_bytes=600)
    assert forms(codec, update) == {"w": "factors"}
    error = squared_error(update, fedzip.decode(codec.encode(update)))
    alone = least_error_alone(update, 600)
    assert error <= min(alone.values()) and error < 0.1 * alone["top-z"]
    assert error < 0.08 * float((matrix.astype(np.float64) ** 2).sum())  # the factors' levels, mostly


def test_the_budget_sends_a_sparse_tensor_as_its_entries(rng):
    sparse = np.zeros((200, 50), np.float32)
    spots = rng.choice(sparse.size, 25, replace=False)
    sparse.flat[spots] = rng.choice([-1.0, 1.0], 25) * rng.uniform(1, 2, 25)
    update = {"w": sparse}
    codec = fedzip.FedZip(budget_bytes=200)
    assert forms(codec, update) == {"w": "top-z"}
    restored = fedzip.decode(codec.encode(update))["w"]
    assert set(np.flatnonzero(restored)) == set(spots)  # every spike, in its place
    assert squared_error(update, {"w": restored}) <= min(least_error_alone(update, 200).values())


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dense_noise_is_quantised_with_most_of_its_entries(rng, bits):
    """Noise has no low rank and no few large entries: Top-z at a large keep wins (zero is one more
    level; its positions cost under a bit an entry, none when every entry is kept)."""
    noise = {"w": rng.standard_normal((200, 50)).astype(np.float32)}
    budget = 10000 * bits // 8 + 60
    codec = fedzip.FedZip(budget_bytes=budget)
    (option,) = codec.plan(noise).values()
    assert option.form == "top-z"
    assert float(option.detail.split()[1].rstrip(",")) >= 0.1
    payload = codec.encode(noise)
    assert len(payload) <= budget
    error = squared_error(noise, fedzip.decode(payload))
    assert error <= min(least_error_alone(noise, budget).values()) * (1 + 1e-9)
    assert error < 0.7**bits * float((noise["w"].astype(np.float64) ** 2).sum())


def test_top_z_candidates_are_priced_without_being_built(rng):
    """Every Top-z candidate's error is the built one's; its bytes bound the built record's from above,
    within the slack of the gap code's bound."""
    from fedzip.candidates import price as _price

    array = heavy_tailed(rng, (300, 200))
    array.flat[rng.choice(array.size, 500, replace=False)] = 0.0
    for encoding in ("dap", "position", "huffman", "auto"):
        options = tensor_options("w", array, True, encoding, max_bytes=4000)
        assert len(options) >= 10
        for option in options:
            q = option.build()
            assert np.all(np.diff(q.positions) > 0) and np.all(array.flat[q.positions] != 0)
            built = _price("w", q, encoding)
            assert built <= option.record_bytes
            if encoding in ("position", "huffman"):
                assert built >= 0.8 * option.record_bytes - 2  # only the labels may group
            rebuilt = q.dense().astype(np.float64)
            exact = float(((array.astype(np.float64) - rebuilt) ** 2).sum())
            assert option.error == pytest.approx(exact, rel=1e-4, abs=1e-12)


@given(
    st.lists(st.integers(-6, 6), min_size=1, max_size=40).filter(any),
    st.sampled_from([0.5, 0.37, 1.0]),
    st.booleans(),
)
def test_the_pool_finds_every_counts_threshold_from_the_value_order(values, scale, every_entry):
    """The count-th largest magnitude, read from candidates sorted by value (ties, one sign only,
    zeros among the candidates when every entry is one)."""
    from fedzip.topz import Pool

    array = np.asarray(values, np.float32) * np.float32(scale)
    largest = None if every_entry else int(np.count_nonzero(array))
    pool = Pool("w", array, "dap", float(np.sum(array.astype(np.float64) ** 2)), largest)
    magnitudes = np.sort(np.abs(array[array != 0].astype(np.float64)))[::-1]
    assert [pool.largest_magnitude(c) for c in range(1, magnitudes.size + 1)] == magnitudes.tolist()


def test_the_kept_entries_are_the_largest_and_grow_with_the_count(rng):
    array = heavy_tailed(rng, (500, 40))
    options = [o for o in tensor_options("w", array, True, "dap", max_bytes=20000) if o.form == "top-z"]
    magnitude = np.abs(array.reshape(-1))
    previous: set[int] = set()
    for option in sorted(options, key=lambda o: o.build().kept):
        kept = option.build().positions
        if 0 < kept.size < magnitude.size:
            assert magnitude[kept].min() >= np.delete(magnitude, kept).max()
        assert previous <= set(kept.tolist())
        previous = set(kept.tolist())


def low_rank_model_update(rng):
    """Updates as training makes them: a few strong directions in every matrix, heavy-tailed noise."""
    update = model_update(rng)
    for name in ("conv.weight", "dense.weight"):
        shape = update[name].shape
        rows, cols = shape[0], int(np.prod(shape[1:]))
        strong = rng.standard_normal((rows, 3)) @ rng.standard_normal((3, cols)) * 0.02
        update[name] = (update[name] + strong.reshape(shape)).astype(np.float32)
    return update


@pytest.mark.parametrize("seed", range(5))
def test_the_budget_matches_or_beats_hand_picked_rank_2_at_its_bytes(seed):
    update = low_rank_model_update(np.random.default_rng(seed))
    picked = fedzip.FedZip(rank=2, clusters=3, iterations=4).encode(update)
    codec = fedzip.FedZip(budget_bytes=len(picked))
    payload = codec.encode(update)
    assert len(payload) <= len(picked)
    assert squared_error(update, fedzip.decode(payload)) <= squared_error(update, fedzip.decode(picked))
    assert forms(codec, update)["dense.weight"] == "factors"


def test_the_plan_says_what_each_tensor_became(rng):
    update = low_rank_model_update(rng)
    codec = fedzip.FedZip(budget_ratio=100)
    plan = codec.plan(update)
    assert list(plan) == list(update)
    payload = codec.encode(update)
    by_name = {t.name: t for t in fedzip.inspect(payload).tensors}
    for name, option in plan.items():
        assert option.form in ("top-z", "factors") and option.detail
        assert option.error >= 0
        assert (option.form == "top-z") == (by_name[name].encoding in ("huffman", "position", "dap"))
    assert sum(o.record_bytes for o in plan.values()) < len(payload)  # plus the container's header
    with pytest.raises(ValueError, match="'error' budget"):
        fedzip.FedZip(keep=0.1).plan(update)


def test_inspect_tells_each_tensors_form(rng):
    update = low_rank_model_update(rng)
    codec = fedzip.FedZip(budget_ratio=100)
    plan = codec.plan(update)
    report = fedzip.inspect(codec.encode(update))
    for tensor in report.tensors:
        option = plan[tensor.name]
        if option.form == "factors":
            assert tensor.form == option.detail  # "rank 3, 8 levels"
        else:
            assert tensor.form == option.detail.split(",")[0]  # "keep 0.238"
    assert "rank " in str(report)


def test_factor_candidates_are_priced_exactly_without_being_built(rng):
    """Bytes from label counts and error from one product per level count: as the built records."""
    from fedzip import wire
    from fedzip.candidates import _factor_options

    array = low_rank_model_update(rng)["dense.weight"]
    energy = float((array.astype(np.float64) ** 2).sum())
    options = _factor_options("w", array, energy, iterations=4)
    assert {o.detail.split(",")[0] for o in options} == {f"rank {r}" for r in (1, 2, 3, 4, 6, 8, 12, 16)}
    for option in options:
        packed = option.build()
        size = wire.record_bytes("w", array.shape, packed.kept, packed.params.size, packed.body_bits)
        assert option.record_bytes == size
        exact = float(((array.reshape(-1).astype(np.float64) - packed.values) ** 2).sum())
        assert option.error == pytest.approx(exact, rel=1e-4, abs=1e-9 * energy)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.integers(1500, 20_000))
def test_more_forms_never_leave_more_error_than_top_z_alone(seed, budget):
    """The greedy walk is no exact knapsack; the codec keeps the better of both forms and each alone
    (of the allocations priced within SETTLED_WITHIN of the best: a form alone priced further off is
    not built, and once ended 1.0101x the combined error, seed 2388 at 6,257 bytes)."""
    update = low_rank_model_update(np.random.default_rng(seed))
    both = squared_error(update, fedzip.decode(fedzip.FedZip(budget_bytes=budget).encode(update)))
    top_z = fedzip.FedZip(budget_bytes=budget, representations=["top-z"])
    alone = squared_error(update, fedzip.decode(top_z.encode(update)))
    assert both <= alone * 1.02


@pytest.mark.parametrize("budget", [1500, 3000, 6000])
def test_the_bytes_between_grid_counts_buy_entries_and_the_plan_tells_the_exact_error(rng, budget):
    """Kept counts are priced on a grid with bounded bytes: settling grows the kept sets with
    measured sizes, so a Top-z budget uses (nearly) all its bytes, and each option's error is
    the decoded tensor's."""
    update = model_update(rng)
    codec = fedzip.FedZip(budget_bytes=budget, representations=["top-z"])
    payload = codec.encode(update)
    assert 0.97 * budget <= len(payload) <= budget
    restored = fedzip.decode(payload)
    for name, option in codec.plan(update).items():
        exact = squared_error({name: update[name]}, {name: restored[name]})
        assert option.error == pytest.approx(exact, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("ratio", [4.0, 16.0, 60.0])
def test_at_low_ratios_every_entry_is_a_candidate_and_zeros_are_never_sent(rng, ratio):
    """At low ratios every nonzero entry is a Top-z candidate (no addresses held): the payload still
    fits, zeros (a pruned update's) stay out, the kept sets grow without adding error, and the
    plan's errors are the decoded ones."""
    update = model_update(rng)
    for array in update.values():
        array.flat[rng.choice(array.size, array.size // 3, replace=False)] = 0.0
    codec = fedzip.FedZip(budget_ratio=ratio, representations=["top-z"])
    payload = codec.encode(update)
    raw = sum(a.nbytes for a in update.values())
    restored = fedzip.decode(payload)
    # at 4x there is room for every nonzero entry at 16 clusters: the least error may keep fewer
    assert (0.0 if ratio == 4.0 else 0.97) * raw / ratio <= len(payload) <= raw / ratio
    for name, array in update.items():
        assert not np.any(restored[name][array == 0])
    plan = codec.plan(update)
    for name, option in plan.items():
        exact = squared_error({name: update[name]}, {name: restored[name]})
        assert option.error == pytest.approx(exact, rel=1e-4, abs=1e-12)
    errors = [
        sum(o.error for o in fedzip.FedZip(budget_ratio=r, representations=["top-z"]).plan(update).values())
        for r in (ratio * 1.5, ratio)
    ]
    assert errors[1] <= errors[0]


def test_a_released_pool_finds_the_same_candidates_again(rng):
    """Pools drop their candidates once priced (memory: every tensor's pool lives until the budget
    has chosen) and find the same ones again for a build or a grown kept set."""
    from fedzip.topz import Pool

    array = heavy_tailed(rng, (1100, 1000))  # 2^20 entries or more: its pool lets go
    pool = Pool("w", array, "dap", float(np.sum(array.astype(np.float64) ** 2)), 60_000)
    index, ascending, sums = pool.index.copy(), pool.ascending.copy(), pool.sums.copy()
    assert index.size == 60_000 and np.all(np.diff(index) > 0)
    pool.release()
    assert pool._index is None and pool._sorted is None  # nothing of the candidates held
    assert np.array_equal(pool.index, index)
    assert np.array_equal(pool.ascending, ascending) and np.array_equal(pool.sums, sums)
    small = Pool("v", array[:100], "dap", 1.0, 500)
    held = small.ascending
    small.release()  # a small pool is kept: finding it again would cost more than it holds
    assert small._sorted is not None and small.ascending is held
