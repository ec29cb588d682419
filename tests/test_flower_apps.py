"""fedzip inside users' Flower apps, on Flower's simulation engine (Ray).

Each simulation runs many strategies back to back from one ServerApp (the
engine starts once). The apps are in ``userapps.py``: a BatchNorm CNN, a model
with a 0-d float parameter, an embedding with integer buffers and a float64
numpy model.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ray")

import ray.cloudpickle
from flwr.app import ConfigRecord, Context
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import (
    LocalDpMod,
    adaptiveclipping_mod,
    arrays_size_mod,
    fixedclipping_mod,
    message_size_mod,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)

import fedzip
import userapps
from fedzip import exact
from fedzip.flower import ConfigurationError, FedZipStrategy, TrafficTracker, fedzip_mod

ray.cloudpickle.register_pickle_by_value(userapps)  # Ray workers cannot import the tests folder

NODES = 5
ROUNDS = 2
COMMON = {"fraction_evaluate": 0.0, "min_available_nodes": NODES, "min_train_nodes": NODES}

STRATEGIES: dict[str, Callable[[], object]] = {
    "FedAvg": lambda: FedAvg(**COMMON),
    "FedAvgM": lambda: FedAvgM(server_momentum=0.9, **COMMON),
    "FedProx": lambda: FedProx(proximal_mu=0.1, **COMMON),
    "FedAdam": lambda: FedAdam(eta=0.05, **COMMON),
    "FedYogi": lambda: FedYogi(eta=0.05, **COMMON),
    "FedAdagrad": lambda: FedAdagrad(eta=0.05, **COMMON),
    "FedMedian": lambda: FedMedian(**COMMON),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2, **COMMON),
    "Krum": lambda: Krum(num_malicious_nodes=1, **COMMON),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, **COMMON),
    "Bulyan": lambda: Bulyan(num_malicious_nodes=0, **COMMON),
    "QFedAvg": lambda: QFedAvg(client_learning_rate=0.1, **COMMON),
}
# Flower's QFedAvg multiplies the clients' arrays in place by a float, which fails
# on integer buffers (BatchNorm's counter) with or without fedzip.
MATRIX_APP = {name: "scalar" if name == "QFedAvg" else "bn_cnn" for name in STRATEGIES}
# The other models go through the strategies most likely to trip on them.
OTHER_APPS = [(app, s) for app in ("scalar", "embedding", "numpy_lr") for s in ("FedAvg", "FedAdam", "Krum")]

DOWNLINK_RUNS = [(app, s) for app in userapps.APPS for s in ("FedAvg", "FedAdam", "Krum")]
FACTOR_RUNS = [(app, s) for app in userapps.APPS for s in ("FedAvg", "FedAdam")]


def start(grid: Grid, strategy, app: str, rounds: int = ROUNDS) -> dict[str, np.ndarray]:
    """Run ``strategy`` from the app's initial weights; seeded so that reruns sample alike."""
    random.seed(0)
    np.random.seed(0)  # Flower's DP wrappers draw their noise from numpy's global state
    result = strategy.start(
        grid,
        userapps.initial_arrays(app),
        num_rounds=rounds,
        train_config=ConfigRecord({"app": app}),
        evaluate_config=ConfigRecord({"app": app}),
    )
    return {k: a.numpy() for k, a in result.arrays.items()}


def simulate(client_app: ClientApp, main: Callable[[Grid], None], nodes: int = NODES) -> None:
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid)

    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(
            server_app=server,
            client_app=client_app,
            num_supernodes=nodes,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"log_to_driver": False, "include_dashboard": False},
            },
        )
    finally:
        flwr_logger.setLevel(level)


def assert_same_model(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The same model; where the strategy alone turned an integer buffer into float64 (FedAvg's
    mean), FedZipStrategy keeps the buffer's dtype: the mean rounded to the nearest."""
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        want = expected[name]
        if got[name].dtype.kind in "iub" and want.dtype.kind == "f":
            want = exact.as_dtype(want, got[name].dtype)
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=2e-6, err_msg=name)


def assert_every_reply_accepted(strategy: FedZipStrategy) -> None:
    assert len(strategy.history) == ROUNDS
    for stats in strategy.history:
        assert stats.failures == [] and stats.accepted == stats.replies == NODES and stats.aggregated


@pytest.fixture(scope="module")
def matrix():
    """Every strategy unwrapped, wrapped with ``none`` and wrapped with FedZip, on every app."""
    out: dict = {}

    def main(grid: Grid) -> None:
        runs = [(MATRIX_APP[name], name) for name in STRATEGIES] + OTHER_APPS
        for app, name in runs:
            plain = start(grid, STRATEGIES[name](), app)
            lossless = FedZipStrategy(STRATEGIES[name](), compressor="none")
            compressed = FedZipStrategy(STRATEGIES[name](), compressor=fedzip.FedZip(keep=0.2))
            out[app, name] = {
                "plain": plain,
                "none": start(grid, lossless, app),
                "none-strategy": lossless,
                "fedzip": start(grid, compressed, app),
                "fedzip-strategy": compressed,
            }
        # Both directions compressed: lossless downloads must give the plain run's model, lossy
        # ones must keep every client on the server's replica (checked by the download's checksum).
        for app, name in DOWNLINK_RUNS:
            lossless = FedZipStrategy(STRATEGIES[name](), compressor="none", downlink="none")
            both = FedZipStrategy(
                STRATEGIES[name](),
                compressor=fedzip.FedZip(keep=0.2),
                error_feedback=True,
                downlink=fedzip.FedZip(keep=0.2),
            )
            out["down", app, name] = {
                "none": start(grid, lossless, app),
                "none-strategy": lossless,
                "fedzip": start(grid, both, app),
                "fedzip-strategy": both,
            }
        # Weight matrices as low-rank factors (FedZip's rank option) both ways, with error feedback.
        for app, name in FACTOR_RUNS:
            factored = FedZipStrategy(
                STRATEGIES[name](),
                compressor=fedzip.FedZip(rank=2, clusters=3),
                error_feedback=True,
                downlink=fedzip.FedZip(rank=2, clusters=3),
            )
            out["factors", app, name] = {"fedzip": start(grid, factored, app), "fedzip-strategy": factored}
        # Flower's server-side DP wrappers, inside FedZipStrategy, against DP alone.
        dp = {
            "fixed": lambda: DifferentialPrivacyServerSideFixedClipping(
                FedAvg(**COMMON), noise_multiplier=0.3, clipping_norm=0.05, num_sampled_clients=NODES
            ),
            "adaptive": lambda: DifferentialPrivacyServerSideAdaptiveClipping(
                FedAvg(**COMMON), noise_multiplier=0.3, num_sampled_clients=NODES, initial_clipping_norm=0.05
            ),
        }
        for kind, make in dp.items():
            out["dp", kind] = {
                "plain": start(grid, make(), "scalar"),
                "none": start(grid, FedZipStrategy(make(), compressor="none"), "scalar"),
            }
        # The wrong order: a DP wrapper outside FedZipStrategy.
        try:
            wrong = DifferentialPrivacyServerSideFixedClipping(
                FedZipStrategy(FedAvg(**COMMON)),
                noise_multiplier=0.3,
                clipping_norm=0.05,
                num_sampled_clients=NODES,
            )
            start(grid, wrong, "scalar")
        except ConfigurationError as exc:
            out["dp", "outside"] = exc

    simulate(userapps.make_client_app(), main)
    return out


def assert_raw_size_is_what_clients_send(strategy: FedZipStrategy, app: str) -> None:
    """Raw bytes per reply: the client's weights in its own dtypes, plus its metrics."""
    weights = userapps.initial_arrays(app).count_bytes()  # the dtypes the clients train in
    for stats in strategy.history:
        per_reply = stats.raw_bytes / stats.accepted
        assert weights < per_reply < weights + 300, (app, per_reply, weights)


class TestSharedSession:
    """fedzip around every strategy, in users' apps: one Flower session (``matrix``) for all."""

    @pytest.mark.parametrize("name", list(STRATEGIES))
    def test_every_strategy(self, matrix, name):
        app = MATRIX_APP[name]
        run = matrix[app, name]
        assert_same_model(run["none"], run["plain"])  # lossless: exactly what the strategy gives alone
        assert_every_reply_accepted(run["none-strategy"])
        assert_every_reply_accepted(run["fedzip-strategy"])
        initial = {k: a.numpy() for k, a in userapps.initial_arrays(app).items()}
        moved = {k for k in initial if not np.allclose(run["fedzip"][k], initial[k])}
        if app == "bn_cnn":
            assert {"head.weight", "features.1.running_mean"} <= moved
            assert run["fedzip"]["features.1.num_batches_tracked"].shape == ()
        else:
            assert {"linear.weight", "temperature"} <= moved
        ratios = [s.ratio for s in run["fedzip-strategy"].history]
        # tiny models, where headers weigh: still several times smaller than the float32 reply
        assert all(r > (3 if app == "bn_cnn" else 1.5) for r in ratios), ratios

    @pytest.mark.parametrize(("app", "name"), OTHER_APPS)
    def test_models_with_scalars_integer_buffers_and_float64(self, matrix, app, name):
        run = matrix[app, name]
        assert_same_model(run["none"], run["plain"])
        assert_every_reply_accepted(run["fedzip-strategy"])
        initial = {k: a.numpy() for k, a in userapps.initial_arrays(app).items()}
        for key, value in run["fedzip"].items():
            assert value.shape == initial[key].shape
        if app == "scalar":
            assert run["fedzip"]["temperature"].shape == ()
        assert_raw_size_is_what_clients_send(run["fedzip-strategy"], app)

    @pytest.mark.parametrize(("app", "name"), FACTOR_RUNS)
    def test_low_rank_factors_in_users_apps(self, matrix, app, name):
        run = matrix["factors", app, name]
        # every client rebuilt the server's model from factors to the bit (its checksum), so no
        # reply failed and no download after the first had to be the whole model
        assert_every_reply_accepted(run["fedzip-strategy"])
        assert [s.dense_downloads for s in run["fedzip-strategy"].history] == [NODES] + [0] * (ROUNDS - 1)
        initial = {k: a.numpy() for k, a in userapps.initial_arrays(app).items()}
        assert list(run["fedzip"]) == list(initial)
        for key, value in run["fedzip"].items():
            assert value.shape == initial[key].shape and np.all(np.isfinite(value)), key
        matrices = [
            k for k, v in initial.items() if v.ndim >= 2 and min(v.shape[0], v.size // v.shape[0]) > 2
        ]
        assert matrices and any(not np.allclose(run["fedzip"][k], initial[k]) for k in matrices)
        for key, value in initial.items():
            # integer buffers travel exactly beside the factors; FedAvg's weighted mean makes them float64
            # (FedAdam steps them like weights)
            if value.dtype.kind in "iu" and name == "FedAvg":
                got = run["fedzip"][key]
                np.testing.assert_allclose(got, np.round(got), atol=1e-9, err_msg=key)
                if key == "position_ids":  # not trained
                    np.testing.assert_allclose(got, value, atol=1e-9)

    @pytest.mark.parametrize(("app", "name"), DOWNLINK_RUNS)
    def test_compressed_downloads_in_users_apps(self, matrix, app, name):
        run = matrix["down", app, name]
        assert_same_model(run["none"], matrix[app, name]["plain"])
        assert_every_reply_accepted(run["none-strategy"])
        strategy = run["fedzip-strategy"]
        assert_every_reply_accepted(strategy)  # a client off the replica would have failed its checksum
        # round 1 is dense; the strategy turns integer buffers into float64 (FedAvg), or the whole model
        # (FedAdam), and round 2 is still a payload
        assert [s.dense_downloads for s in strategy.history] == [NODES] + [0] * (ROUNDS - 1)
        assert all(s.downlink_bytes < s.downlink_raw_bytes for s in strategy.history[1:])
        initial = {k: a.numpy() for k, a in userapps.initial_arrays(app).items()}
        replica = strategy.broadcaster.replica
        assert list(replica) == list(initial)
        for key, value in run["fedzip"].items():
            assert value.shape == initial[key].shape == replica[key].shape
            if initial[key].dtype.kind in "iub":  # integer buffers stay integer, both ways
                assert value.dtype == replica[key].dtype == initial[key].dtype, key
                if np.array_equal(value, initial[key]):  # unchanged (position ids): the replica too
                    np.testing.assert_array_equal(replica[key], value)
        moved = {k for k in initial if not np.allclose(run["fedzip"][k], initial[k])}
        assert moved, "the compressed run did not train"

    def test_fedopt_ratios_count_what_the_client_sends(self, matrix):
        """FedAdam keeps a float64 global model; the clients send float32, and that is what counts."""
        for name in ("FedAdam", "FedYogi", "FedAdagrad"):
            assert_raw_size_is_what_clients_send(matrix["bn_cnn", name]["fedzip-strategy"], "bn_cnn")
            assert_raw_size_is_what_clients_send(matrix["bn_cnn", name]["none-strategy"], "bn_cnn")

    @pytest.mark.parametrize("kind", ["fixed", "adaptive"])
    def test_server_side_dp_inside_fedzip_clips_like_dp_alone(self, matrix, kind):
        run = matrix["dp", kind]
        assert_same_model(run["none"], run["plain"])

    def test_a_dp_wrapper_outside_fedzip_is_refused(self, matrix):
        message = str(matrix["dp", "outside"])
        assert "FedZipStrategy(DifferentialPrivacyServerSideFixedClipping(FedAvg()" in message


def _client_dp_main(out: dict, make_dp: Callable[[], object], clip: float) -> Callable[[Grid], None]:
    def main(grid: Grid) -> None:
        out["plain"] = start(grid, make_dp(), "scalar")
        out["none"] = start(grid, FedZipStrategy(make_dp(), compressor="none"), "scalar")
        norms: list[float] = []

        def record_norm(_: int, payload: bytes) -> None:
            update = fedzip.decode(payload)
            norms.append(
                float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in update.values())))
            )

        compressed = FedZipStrategy(
            make_dp(),
            compressor=fedzip.FedZip(keep=0.3),
            on_payload=record_norm,
            keyed_uploads=False,  # record_norm decodes payloads without the model at hand: named ones
        )
        out["fedzip"] = start(grid, compressed, "scalar")
        out["fedzip-strategy"], out["norms"] = compressed, norms

    return main


def test_client_side_fixed_clipping_with_fedzip_first_among_flowers_mods():
    clip = 0.05
    out: dict = {}
    mods = [message_size_mod, fedzip_mod, arrays_size_mod, fixedclipping_mod]
    make = lambda: DifferentialPrivacyClientSideFixedClipping(  # noqa: E731
        FedAvg(**COMMON), noise_multiplier=0.3, clipping_norm=clip, num_sampled_clients=NODES
    )
    simulate(userapps.make_client_app(mods), _client_dp_main(out, make, clip))
    assert_same_model(out["none"], out["plain"])
    assert_every_reply_accepted(out["fedzip-strategy"])
    assert len(out["norms"]) == NODES * ROUNDS
    assert max(out["norms"]) <= clip * (1 + 1e-5)  # what travels is still clipped


def test_client_side_adaptive_clipping_and_local_dp_after_fedzip():
    out: dict = {}
    mods = [fedzip_mod, adaptiveclipping_mod, message_size_mod]
    make = lambda: DifferentialPrivacyClientSideAdaptiveClipping(  # noqa: E731
        FedAvg(**COMMON), noise_multiplier=0.3, num_sampled_clients=NODES, initial_clipping_norm=0.05
    )
    simulate(userapps.make_client_app(mods), _client_dp_main(out, make, clip=float("inf")))
    assert_same_model(out["none"], out["plain"])
    assert_every_reply_accepted(out["fedzip-strategy"])

    local: dict = {}

    def main(grid: Grid) -> None:
        strategy = FedZipStrategy(FedAvg(**COMMON), compressor=fedzip.FedZip(keep=0.3))
        local["model"], local["strategy"] = start(grid, strategy, "scalar"), strategy

    local_dp = LocalDpMod(clipping_norm=0.05, sensitivity=0.05, epsilon=5.0, delta=1e-5)
    simulate(userapps.make_client_app([arrays_size_mod, fedzip_mod, local_dp]), main)
    assert_every_reply_accepted(local["strategy"])


@pytest.mark.parametrize(
    ("mods", "expected"),
    [
        ([fixedclipping_mod, fedzip_mod], r"mods=\[fedzip_mod, fixedclipping_mod\]"),
        (
            [LocalDpMod(clipping_norm=1.0, sensitivity=1.0, epsilon=1.0, delta=1e-5), fedzip_mod],
            r"mods=\[fedzip_mod, LocalDpMod\]",
        ),
        ([message_size_mod], r"add fedzip_mod to the ClientApp"),
    ],
    ids=["clipping-before-fedzip", "localdp-before-fedzip", "no-fedzip-mod"],
)
def test_a_misconfigured_client_stops_the_run_at_round_one_with_what_to_fix(mods, expected):
    rounds_started = []

    def main(grid: Grid) -> None:
        make = (
            (lambda: DifferentialPrivacyClientSideFixedClipping(FedAvg(**COMMON), 0.3, 1.0, NODES))
            if mods[0] is fixedclipping_mod
            else (lambda: FedAvg(**COMMON))
        )
        strategy = FedZipStrategy(make(), compressor="none")
        rounds_started.append(strategy)
        start(grid, strategy, "scalar", rounds=3)

    with pytest.raises(ConfigurationError, match=expected):
        simulate(userapps.make_client_app(mods), main)
    (strategy,) = rounds_started
    assert len(strategy.history) == 1  # stopped at the first round, not after all of them


def test_size_mods_before_fedzip_and_integer_buffers_that_stay_exact():
    """Flower's FedAvg averages integer buffers in float64; the counters still add up."""
    out: dict = {}

    def main(grid: Grid) -> None:
        strategy = FedZipStrategy(FedAvg(**COMMON), compressor=fedzip.FedZip(keep=0.05), error_feedback=True)
        out["model"], out["strategy"] = start(grid, strategy, "embedding", rounds=3), strategy

    simulate(userapps.make_client_app([message_size_mod, arrays_size_mod, fedzip_mod]), main)
    assert [s.accepted for s in out["strategy"].history] == [NODES] * 3
    model = out["model"]
    np.testing.assert_allclose(model["position_ids"], np.arange(6), atol=1e-12)
    assert model["steps"].shape == () and float(model["steps"]) == pytest.approx(6.0)  # 2 steps a round


def test_the_traffic_tracker_in_a_plain_app_without_fedzip(tmp_path):
    """A user's app with no fedzip mod: the tracker changes nothing and counts every message."""
    out: dict = {}
    evaluating = {**COMMON, "fraction_evaluate": 1.0}
    weights = userapps.initial_arrays("bn_cnn").count_bytes()

    def main(grid: Grid) -> None:
        out["plain"] = start(grid, FedAvg(**evaluating), "bn_cnn")
        tracked = TrafficTracker(FedAvg(**evaluating), out=tmp_path / "fedavg")
        out["tracked"], out["tracker"] = start(grid, tracked, "bn_cnn"), tracked
        dp = lambda: DifferentialPrivacyServerSideFixedClipping(  # noqa: E731
            FedAdam(eta=0.05, **COMMON), noise_multiplier=0.3, clipping_norm=0.05, num_sampled_clients=NODES
        )
        out["dp"] = start(grid, dp(), "bn_cnn")
        out["dp-tracked"] = start(grid, TrafficTracker(dp()), "bn_cnn")

    simulate(userapps.make_client_app(mods=[]), main)
    assert_same_model(out["tracked"], out["plain"])
    assert_same_model(out["dp-tracked"], out["dp"])
    tracker = out["tracker"]
    assert [(p.round, p.phase) for p in tracker.phases] == [
        (r, phase) for r in range(1, ROUNDS + 1) for phase in ("train", "evaluate")
    ]
    for _, phase, transfer in tracker.rows:
        assert transfer.status == "accepted"
        assert weights < transfer.down_bytes < weights + 400  # the model and the config
        if phase == "train":
            assert weights < transfer.up_bytes < weights + 400  # the trained model and its metrics
        else:
            assert 0 < transfer.up_bytes < 200  # metrics alone
        assert transfer.seconds > 0
    assert tracker.totals("train").ratio == 1.0
    with open(tmp_path / "fedavg" / "traffic.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * ROUNDS * NODES
    report = json.loads((tmp_path / "fedavg" / "traffic.json").read_text())
    assert report["total"]["all"]["up_bytes"] == sum(t.up_bytes for *_, t in tracker.rows)
    assert len(report["nodes"]) == NODES and report["total"]["all"]["joules"] > 0
