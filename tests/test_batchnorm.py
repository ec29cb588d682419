"""BatchNorm running variances stay positive on the server; a budget too small names the user's budget."""

import numpy as np
import pytest

import fedzip
from conftest import heavy_tailed
from fedzip import batchnorm


def test_the_names_of_running_variances():
    for name in ("layer1.0.bn1.running_var", "bn.running_var", "dense/moving_variance"):
        assert batchnorm.is_variance(name)
    for name in ("bn.running_mean", "bn.weight", "bn.num_batches_tracked", "running_var.weight"):
        assert not batchnorm.is_variance(name)


def test_a_budget_too_small_names_the_users_budget_with_integer_tensors(rng):
    update = {"w": heavy_tailed(rng, (300, 30)), "n": np.array(12345678, np.int64)}
    with pytest.raises(ValueError, match=r"budget_bytes=30 is below .* integer tensors sent exactly"):
        fedzip.FedZip(budget_bytes=30).encode(update)


def test_a_variance_is_kept_positive_the_way_the_clients_pointed():
    old = np.array([1.0, 0.01, 0.5, -1.0, 0.2], np.float32)
    new = np.array([0.9, -0.2, np.nan, -0.5, 0.0], np.float32)
    kept = batchnorm.positive_variance(new, old)
    assert kept.dtype == np.float32
    np.testing.assert_array_equal(kept, np.array([0.9, 0.005, 0.25, 0.9, 0.1], np.float32))
    fine = np.array([0.3, 0.2], np.float32)
    assert batchnorm.positive_variance(fine, fine) is fine


def test_the_server_keeps_running_variances_positive_whatever_the_replies(rng, task_identity):
    """A coarse upload (one level for a whole vector) pushes small variances below zero; the
    aggregate keeps them positive; with exact uploads it is FedAvg's (to float32's rounding)."""
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from conftest import FakeGrid, delivered
    from fedzip.flower import FedZipStrategy, fedzip_mod, protocol

    variance = np.array([1.0] * 4 + [0.01] * 4, np.float32)
    model = {
        "conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "bn.running_var": variance,
        "bn.running_mean": np.zeros(8, np.float32),
    }
    for compressor, coarse in (
        (fedzip.FedZip(keep=0.5, clusters=1), True),
        (fedzip.get_compressor("none"), False),
    ):
        strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=compressor)

        def app(msg, context):
            got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
            trained = dict(got)
            trained["bn.running_var"] = (got["bn.running_var"] * 0.1).astype(
                np.float32
            )  # a gap of -0.9 or -0.009
            trained["conv.weight"] = got["conv.weight"] + 0.01
            return Message(
                RecordDict({"arrays": protocol.to_record(trained), "m": MetricRecord({"num-examples": 10})}),
                reply_to=msg,
            )

        arrays = protocol.to_record(model)
        messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid([0, 1])))
        replies = []
        for message in messages:
            context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
            replies.append(fedzip_mod(delivered(message), context, app))
        new = protocol.from_record(strategy.aggregate_train(1, replies)[0])
        if coarse:
            # one level for the vector: its mean gap, about -0.45, taken by every entry
            assert np.all(new["bn.running_var"][:4] < 1) and np.all(new["bn.running_var"] > 0)
            np.testing.assert_array_equal(new["bn.running_var"][4:], variance[4:] / 2)
        else:
            np.testing.assert_allclose(new["bn.running_var"], variance * 0.1, rtol=1e-6)
