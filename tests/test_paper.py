"""The authors' size estimate, reproduced to be reported next to real bytes."""

import numpy as np

import fedzip
from conftest import heavy_tailed
from fedzip.bench import paper_cnn_update
from fedzip.paper import authors_estimate


def test_estimate_by_hand():
    x = np.array([[0, 0, 5, 0, 0, -5, 0, 0, 0, 5]], np.float32)
    estimate = authors_estimate({"w": x}, keep=1.0)
    # clusters: -5 (1 entry), 5 (2 entries), 0 (7 entries)
    assert estimate == {"original": 320, "huffman": 2 * 1 + 2 + 7, "position": 3 * 27, "dap": 3 + (2 + 3)}


def test_biases_are_not_sparsified_and_zeros_form_the_majority():
    bias = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    weight = np.zeros((100, 10), np.float32)
    weight[0, :5] = [1, -1, 2, -2, 3]
    estimate = authors_estimate({"b": bias, "w": weight}, keep=0.003)  # 3 of 1000 weights kept
    # w: 3 kept entries out of 1000 -> the two small clusters hold 3 entries
    w_only = authors_estimate({"w": weight}, keep=0.003)
    assert w_only["position"] == 3 * 27
    assert estimate["original"] == 32 * 1004
    assert estimate["position"] - w_only["position"] >= 27  # every bias is kept, so some are counted


def test_estimate_overstates_dap_at_one_percent_on_the_paper_cnn():
    """FEDZIP.md: the authors' accounting gives ~434x at 1%, above what real bytes can do."""
    update = paper_cnn_update()
    estimate = authors_estimate(update, keep=0.01)
    estimated_rate = estimate["original"] / estimate["dap"]
    real_rate = 4 * sum(a.size for a in update.values()) / len(fedzip.FedZip(keep=0.01).encode(update))
    assert 400 < estimated_rate < 470
    assert real_rate < estimated_rate


def test_huffman_estimate_cannot_beat_32x():
    update = {"w": heavy_tailed(np.random.default_rng(0), (300, 300))}
    estimate = authors_estimate(update, keep=0.001)
    assert estimate["huffman"] >= 300 * 300
