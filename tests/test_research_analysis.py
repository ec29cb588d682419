"""The convergence protocol's arithmetic: plateau rule, rounds and bytes to a target."""

import math

import pytest

pytest.importorskip("matplotlib")

from research.analysis import plateau, reach
from research.runs import RunSeeds
from research.targets import PLATEAU_POINTS

from fedzip.fl.config import ExperimentConfig
from fedzip.fl.plan import PlannedRun


def rows(curve, payload=100.0):
    return [
        {
            "round": float(i),
            "val_accuracy": v,
            "accuracy": math.nan,
            "payload_bytes": 0.0 if i == 0 else payload,
        }
        for i, v in enumerate(curve)
    ]


def test_reach_counts_payload_bytes_up_to_the_first_round_at_the_target():
    metrics = rows([0.1, 0.5, 0.79, 0.8, 0.7, 0.9])
    assert reach(metrics, 0.8) == (3, 300.0)
    assert reach(metrics, 0.95) is None
    assert reach(metrics, 0.05) == (1, 100.0)  # round 0 (nothing sent) never counts


def test_plateau_compares_three_round_means_over_the_last_fifth():
    flat = RunSeeds("fedavg", metrics=[rows([0.1] + [0.8] * 20 + [0.801] * 30)])
    gain, start, last = plateau(flat)
    assert last == 50 and start == 40
    assert gain < PLATEAU_POINTS
    climbing = RunSeeds("fedavg", metrics=[rows([0.1 + 0.01 * i for i in range(51)])])
    gain, _, _ = plateau(climbing)
    assert gain == pytest.approx(100 * 0.01 * 8, abs=1e-6)  # means of rounds 48-50 and 40-42
    assert gain > PLATEAU_POINTS


def seeds(curves, test_last=1):
    cfg = ExperimentConfig().replace(server={"test_last": test_last})
    runs = [PlannedRun("x", cfg.replace(seed=seed), seed) for seed in range(len(curves))]
    return RunSeeds("x", runs=runs, metrics=[rows(curve) for curve in curves])


def test_curves_are_means_over_seeds():
    two = seeds([[0.1, 0.5, 0.7], [0.1, 0.7, 0.9]])
    assert two.curve("val_accuracy").tolist() == pytest.approx([0.1, 0.6, 0.8])
    assert two.final("val_accuracy").tolist() == [0.7, 0.9]


def test_final_values_are_means_over_the_last_test_last_rounds_never_round_0():
    assert seeds([[0.1, 0.5, 0.7, 0.8]], test_last=2).final("val_accuracy") == pytest.approx([0.75])
    # more rounds asked for than were run: the measured rounds only, not the initial model's
    assert seeds([[0.1, 0.5, 0.7]], test_last=5).final_by_seed("val_accuracy") == {0: pytest.approx(0.6)}
