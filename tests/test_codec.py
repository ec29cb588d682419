import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedzip
from conftest import heavy_tailed

ENCODINGS = ["huffman", "position", "dap", "auto"]


def paper_like_update(rng, dtype=np.float32):
    return {
        "conv1.weight": heavy_tailed(rng, (32, 1, 3, 3), dtype),
        "conv1.bias": heavy_tailed(rng, (32,), dtype),
        "fc.weight": heavy_tailed(rng, (128, 300), dtype),
        "fc.bias": heavy_tailed(rng, (128,), dtype),
        "scale": np.asarray(0.5, dtype=dtype),
        "empty": np.zeros((0, 4), dtype=dtype),
    }


def assert_same(restored, expected):
    assert list(restored) == list(expected)
    for name, value in expected.items():
        assert restored[name].dtype == value.dtype
        assert restored[name].shape == value.shape
        assert np.array_equal(restored[name], value)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_decode_is_exactly_the_lossy_result(rng, encoding, dtype):
    update = paper_like_update(rng, dtype)
    codec = fedzip.FedZip(keep=0.01, clusters=3, encoding=encoding)
    payload = codec.encode(update)
    assert isinstance(payload, bytes)
    assert_same(fedzip.decode(payload), codec.approximate(update))
    assert_same(codec.decode(payload), codec.approximate(update))


def test_example_from_the_readme(rng):
    update = {"w": heavy_tailed(rng, (256, 256)), "b": heavy_tailed(rng, (256,))}
    codec = fedzip.FedZip(keep=0.01, clusters=3, encoding="dap")
    payload = codec.encode(update)
    restored = fedzip.decode(payload)
    assert all((restored[k] == v).all() for k, v in codec.approximate(update).items())
    report = fedzip.inspect(payload)
    assert report.total_bytes == len(payload)
    assert sum(t.total_bits for t in report.tensors) + 8 * report.container_bytes == 8 * len(payload)
    assert [t.encoding for t in report.tensors] == ["dap", "dap"]
    assert "dap" in str(report)


def test_sparsification_and_quantization_semantics(rng):
    w = heavy_tailed(rng, (100, 50))
    b = heavy_tailed(rng, (50,))
    out = fedzip.FedZip(keep=0.02, clusters=3).approximate({"w": w, "b": b})
    kept = np.flatnonzero(out["w"])
    assert kept.size == math.ceil(0.02 * w.size)
    # the kept entries are the largest in magnitude
    assert np.abs(w).reshape(-1)[kept].min() >= np.sort(np.abs(w).reshape(-1))[-kept.size]
    assert np.unique(out["w"][out["w"] != 0]).size <= 3
    # biases are quantized but not sparsified by default
    assert np.count_nonzero(out["b"]) == b.size
    sparse_b = fedzip.FedZip(keep=0.02, sparsify_1d=True).approximate({"b": b})["b"]
    assert np.count_nonzero(sparse_b) == 1


def test_keep_one_and_many_clusters_is_nearly_lossless(rng):
    w = heavy_tailed(rng, (64, 64))
    codec = fedzip.FedZip(keep=1.0, clusters=256, encoding="auto")
    restored = fedzip.decode(codec.encode({"w": w}))["w"]
    assert np.abs(restored - w).max() < 0.05 * np.abs(w).max()
    assert np.count_nonzero(restored) == w.size


def test_auto_encoding_is_never_larger(rng):
    update = paper_like_update(rng)
    sizes = {e: len(fedzip.FedZip(keep=0.05, encoding=e).encode(update)) for e in ENCODINGS}
    assert sizes["auto"] <= min(sizes.values())


def test_dap_is_near_the_entropy_bound(rng):
    w = heavy_tailed(rng, (1000, 1000))
    codec = fedzip.FedZip(keep=0.01, clusters=3, encoding="dap")
    payload = codec.encode({"w": w})
    approx = codec.approximate({"w": w})["w"].reshape(-1)
    kept = approx[approx != 0]
    p = kept.size / w.size
    _, counts = np.unique(kept, return_counts=True)
    label_entropy = -(counts / kept.size * np.log2(counts / kept.size)).sum()
    bound = w.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) + kept.size * label_entropy + 32 * 3
    assert 8 * len(payload) <= 1.03 * bound
    assert 4 * w.size / len(payload) > 300


def test_huffman_costs_at_least_one_bit_per_entry(rng):
    w = heavy_tailed(rng, (200, 200))
    payload = fedzip.FedZip(keep=0.001, encoding="huffman").encode({"w": w})
    assert len(payload) >= w.size / 8


def test_all_zero_and_constant_tensors():
    update = {"z": np.zeros((30, 30), np.float32), "c": np.full((4, 5), 2.5, np.float64)}
    for encoding in ENCODINGS:
        codec = fedzip.FedZip(keep=0.5, encoding=encoding)
        restored = fedzip.decode(codec.encode(update))
        assert_same(restored, codec.approximate(update))
        assert not restored["z"].any()
        assert np.count_nonzero(restored["c"]) == 10 and set(restored["c"].ravel()) == {0.0, 2.5}


def test_empty_update_round_trips():
    assert fedzip.decode(fedzip.FedZip().encode({})) == {}


def test_deterministic(rng):
    update = paper_like_update(rng)
    codec = fedzip.FedZip(keep=0.03, clusters="auto", encoding="auto")
    assert codec.encode(update) == codec.encode({k: v.copy() for k, v in update.items()})


def test_accepts_array_likes(rng):
    restored = fedzip.decode(fedzip.FedZip(keep=1.0).encode({"w": [[1.0, 2.0], [3.0, 4.0]]}))
    assert restored["w"].shape == (2, 2) and restored["w"].dtype == np.float64


@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.float16, np.float32, np.float64]),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
            elements=st.floats(-1e4, 1e4, width=16),
        ),
        max_size=4,
    ),
    keep=st.floats(0.001, 1.0),
    clusters=st.one_of(st.integers(1, 256), st.just("auto")),
    encoding=st.sampled_from(ENCODINGS),
    sparsify_1d=st.booleans(),
)
def test_round_trip_property(arrays, keep, clusters, encoding, sparsify_1d):
    update = {f"t{i}": a for i, a in enumerate(arrays)}
    codec = fedzip.FedZip(keep=keep, clusters=clusters, encoding=encoding, sparsify_1d=sparsify_1d)
    payload = codec.encode(update)
    assert_same(fedzip.decode(payload), codec.approximate(update))
    report = fedzip.inspect(payload)
    assert report.total_bytes == len(payload)
    for t, (name, a) in zip(report.tensors, update.items(), strict=True):
        assert t.name == name and t.shape == a.shape
        assert t.kept <= a.size and t.clusters <= (256 if clusters == "auto" else clusters)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep": 0}, "keep"),
        ({"keep": 1.5}, "keep"),
        ({"keep": "0.1"}, "keep"),
        ({"keep": float("nan")}, "keep"),
        ({"clusters": 0}, "clusters"),
        ({"clusters": 257}, "clusters"),
        ({"clusters": 2.5}, "clusters"),
        ({"clusters": True}, "clusters"),
        ({"encoding": "zip"}, "encoding"),
        ({"sparsify_1d": "yes"}, "sparsify_1d"),
        ({"rank": 0}, "rank"),
        ({"rank": 65}, "rank"),
        ({"rank": 2.0}, "rank"),
        ({"rank": 2, "budget_ratio": 1000.0}, "not both"),
        ({"rank": 2, "clusters": "auto"}, "auto"),
    ],
)
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fedzip.FedZip(**kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_rejected(bad):
    w = np.ones((4, 4), np.float32)
    w[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        fedzip.FedZip().encode({"w": w})


@pytest.mark.parametrize(
    "update",
    [
        {"w": np.array(["a", "b"])},
        {"w": np.ones(3, dtype=np.complex64)},
        {1: np.ones(3, np.float32)},
        [np.ones(3, np.float32)],
        {"w": np.full(3, 1e300)},
    ],
)
def test_bad_updates_raise_value_error(update):
    with pytest.raises(ValueError):
        fedzip.FedZip().encode(update)


def test_config_round_trip_and_registry():
    codec = fedzip.FedZip(keep=0.05, clusters="auto", encoding="position", sparsify_1d=True)
    config = codec.get_config()
    assert config == {
        "id": "fedzip",
        "keep": 0.05,
        "clusters": "auto",
        "encoding": "position",
        "sparsify_1d": True,
        "budget_bytes": None,
        "budget_ratio": None,
        "budget_split": None,
        "rank": None,
        "iterations": None,
        "representations": None,
        "known_layout": False,
    }
    assert fedzip.FedZip.from_config(config) == codec
    assert fedzip.get_compressor(config) == codec
    assert "fedzip" in fedzip.available()
    with pytest.raises(ValueError, match="unknown compressor"):
        fedzip.get_compressor("nope")
    with pytest.raises(ValueError, match="unknown option"):
        fedzip.get_compressor({"id": "fedzip", "level": 3})


@pytest.mark.parametrize("source", ["huffman", "position", "dap"])
def test_transcode_is_lossless_and_matches_a_direct_encode(rng, source):
    update = paper_like_update(rng)
    payload = fedzip.FedZip(keep=0.05, encoding=source).encode(update)
    restored = fedzip.decode(payload)
    for target in ("huffman", "position", "dap", "auto"):
        other = fedzip.transcode(payload, target)
        assert other == fedzip.FedZip(keep=0.05, encoding=target).encode(update)
        assert_same(fedzip.decode(other), restored)


def test_transcode_refuses_what_it_cannot_do(rng):
    update = paper_like_update(rng)
    with pytest.raises(ValueError, match="only FedZip tensors"):
        fedzip.transcode(fedzip.get_compressor("signsgd").encode(update), "dap")
    with pytest.raises(ValueError, match="encoding must be"):
        fedzip.transcode(fedzip.FedZip().encode(update), "zip")
    with pytest.raises(fedzip.FormatError):
        fedzip.transcode(fedzip.FedZip().encode(update)[:-1], "dap")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_factors_the_matrices_and_leaves_the_rest_to_top_z(rng, dtype):
    from fedzip.compressors import LowRank

    update = {
        "conv": heavy_tailed(rng, (16, 8, 3, 3), dtype),
        "bias": heavy_tailed(rng, (16,), dtype),
        "tiny": heavy_tailed(rng, (2, 3), dtype),  # factoring would not be smaller
        "scalar": np.asarray(0.5, dtype),
    }
    codec = fedzip.FedZip(rank=2, clusters=3, encoding="dap")
    payload, sent = codec.encode_with_approximation(update)
    restored = fedzip.decode(payload)
    for name, array in update.items():
        assert restored[name].dtype == array.dtype and restored[name].shape == array.shape
        np.testing.assert_array_equal(restored[name], sent[name])
    encodings = {t.name: t.encoding for t in fedzip.inspect(payload).tensors}
    assert encodings == {"conv": "lowrank", "bias": "dap", "tiny": "dap", "scalar": "dap"}
    # a factored matrix is what LowRank sends; the rest is what FedZip without rank sends
    alone = LowRank(rank=2, clusters=3)
    np.testing.assert_array_equal(sent["conv"], alone.decode(alone.encode({"conv": update["conv"]}))["conv"])
    plain = fedzip.FedZip(clusters=3, encoding="dap").approximate(update)
    for name in ("bias", "tiny", "scalar"):
        np.testing.assert_array_equal(sent[name], plain[name])
    # error feedback keeps what the factors missed, in place
    residual = {k: np.array(v, copy=True) for k, v in update.items()}
    assert codec.encode_subtract(residual) == payload
    for name in update:
        np.testing.assert_allclose(residual[name], update[name] - sent[name], rtol=1e-6, atol=1e-7)


def test_more_subspace_iterations_find_closer_factors(rng):
    # a spectrum that decays slowly: two steps from a random start miss part of the top subspace
    left, right = (
        np.linalg.qr(rng.standard_normal((64, 64)))[0],
        np.linalg.qr(rng.standard_normal((256, 64)))[0],
    )
    matrix = ((left * 0.85 ** np.arange(64)) @ right.T).astype(np.float32)
    errors = []
    for iterations in (1, 2, 4, 8):
        codec = fedzip.FedZip(rank=4, clusters=16, iterations=iterations)
        assert fedzip.get_compressor(codec.get_config()) == codec
        sent = fedzip.decode(codec.encode({"w": matrix}))["w"]
        errors.append(float(np.linalg.norm(matrix - sent) / np.linalg.norm(matrix)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] - 0.02
    best = np.linalg.norm(0.85 ** np.arange(4, 64)) / np.linalg.norm(0.85 ** np.arange(64))
    assert best <= errors[-1] < best + 0.05  # near the best rank-4 error, 16 levels a column
    for bad in (0, 101, True, 2.0):
        with pytest.raises(ValueError, match="iterations must be"):
            fedzip.FedZip(rank=4, iterations=bad)
    with pytest.raises(ValueError, match="give rank, or a budget"):
        fedzip.FedZip(iterations=4)


def test_an_encoding_id_or_name_is_registered_once():
    from fedzip.payload import ENCODING_NAMES, register_encoding

    def decoder(rec):
        raise AssertionError("never called")

    taken = next(iter(ENCODING_NAMES))
    before = dict(ENCODING_NAMES)
    with pytest.raises(ValueError, match="taken"):
        register_encoding(taken, "another-name", decoder)
    free = next(i for i in range(256) if i not in ENCODING_NAMES)
    with pytest.raises(ValueError, match="taken"):
        register_encoding(free, ENCODING_NAMES[taken], decoder)
    with pytest.raises(ValueError, match="0 to 255"):
        register_encoding(256, "too-large", decoder)
    assert before == ENCODING_NAMES  # nothing was overwritten


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep": 0.1, "budget_ratio": 100}, "keep is not used with a budget"),
        ({"keep": 0.2, "budget_bytes": 5000}, "keep is not used with a budget"),  # even the default
        ({"clusters": 4, "budget_ratio": 100}, "chooses each tensor's clusters"),
        ({"budget_split": "uniform"}, "give budget_bytes or budget_ratio"),
        ({"budget_split": "error"}, "give budget_bytes or budget_ratio"),
        ({"iterations": 2}, "give rank, or a budget"),
        ({"iterations": 2, "budget_ratio": 100, "representations": ["top-z"]}, "give rank, or a budget"),
        ({"representations": ["factors", "top-z"]}, "give budget_bytes or budget_ratio too"),
        ({"budget_ratio": 100, "budget_split": "uniform", "representations": ["top-z"]}, "Top-z's own rule"),
        ({"budget_ratio": 100, "representations": ["factors"]}, "cannot send vectors"),
        ({"budget_ratio": 100, "representations": ["sketch"]}, "some of top-z, factors"),
        ({"budget_ratio": 100, "representations": ["dense"]}, "Top-z keeping every entry"),
        ({"budget_ratio": 100, "representations": "factors"}, "a list of names"),
        ({"budget_ratio": 100, "representations": []}, "some of top-z, factors"),
    ],
)
def test_options_the_mode_ignores_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        fedzip.FedZip(**options)


def test_equal_configs_mean_equal_behaviour():
    # what the mode does not use is not part of the config, so two codecs that encode alike are equal
    assert fedzip.FedZip(budget_ratio=100) == fedzip.FedZip(budget_ratio=100, budget_split="error")
    assert fedzip.FedZip(budget_ratio=100).get_config()["keep"] is None
    assert fedzip.FedZip() == fedzip.FedZip(keep=0.2, clusters=3)
    assert fedzip.FedZip(rank=2) == fedzip.FedZip(rank=2, iterations=2)
    assert fedzip.FedZip(budget_ratio=100) == fedzip.FedZip(
        budget_ratio=100, representations=["factors", "top-z", "top-z"], iterations=4
    )
    uniform = fedzip.FedZip(budget_ratio=100, budget_split="uniform")
    assert uniform.clusters == 3 and uniform == fedzip.FedZip.from_config(uniform.get_config())
