"""The experiment models: shapes, training, and their state (BatchNorm statistics, integer counters)
through fedzip's mod and strategy."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedzip
from conftest import FakeGrid
from fedzip.fl import models, training
from fedzip.flower import FedZipStrategy, fedzip_mod

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.mark.parametrize("name", models.MODELS)
def test_every_model_classifies_28x28_images_and_learns(name):
    model = training.fast_layout(models.build(name, classes=10, seed=1))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40) * 3
    images = rng.random((40, 28, 28), dtype=np.float32) * 0.3
    images[labels == 0, :14] += 0.7  # class 0 bright on top, class 3 below: a rule every model can fit
    images[labels == 3, 14:] += 0.7
    first = training.train(model, images, labels, 1, 8, "sgd", 0.05, 0)
    last = training.train(model, images, labels, 5, 8, "sgd", 0.05, 0)
    assert last < 0.8 * first, (first, last)  # the training loss falls
    with torch.inference_mode():
        out = model(training.to_tensor(images[:4]).contiguous(memory_format=torch.channels_last))
    assert out.shape == (4, 10)
    assert models.build(name, seed=1).state_dict().keys() == model.state_dict().keys()


def test_the_new_models_are_sized_as_promised():
    resnet, vit = models.build("resnet"), models.build("vit")
    assert 2e5 < models.parameter_count(resnet) < 3e6 and 2e5 < models.parameter_count(vit) < 3e6
    kernels = sum(p.numel() for p in resnet.parameters() if p.ndim == 4)
    assert kernels > 0.9 * models.parameter_count(resnet)  # conv-heavy
    names = dict(vit.named_parameters())
    assert {"cls", "positions", "norm.weight"} <= set(names)
    assert any("self_attn.in_proj_weight" in n for n in names)
    with pytest.raises(ValueError, match="choose from cnn, mlp, resnet, vit"):
        models.build("resnet50")


@pytest.mark.parametrize("name", ["resnet", "vit"])
@pytest.mark.parametrize("codec", [fedzip.FedZip(keep=0.05), fedzip.FedZip(rank=2, clusters=3)])
def test_a_trained_models_state_travels_through_mod_and_strategy(name, codec):
    """BatchNorm running statistics are compressed like weights; its int64 counter arrives exact."""
    model = training.fast_layout(models.build(name, seed=0))
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    strategy = FedZipStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=codec)
    rng = np.random.default_rng(1)
    images, labels = rng.random((30, 28, 28), dtype=np.float32), rng.integers(0, 10, 30)

    def app(msg, context):
        local = training.fast_layout(models.build(name))
        local.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        training.train(local, images, labels, 1, 10, "sgd", 0.05, 0)
        content = RecordDict(
            {"arrays": ArrayRecord(local.state_dict()), "metrics": MetricRecord({"num-examples": 30})}
        )
        return Message(content, reply_to=msg)

    (msg,) = strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}), FakeGrid(1))
    copy = Message(RecordDict(dict(msg.content.items())), dst_node_id=0, message_type="train")
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    reply = fedzip_mod(copy, context, app)
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert strategy.history[-1].accepted == 1 and strategy.history[-1].ratio > 4
    got = {k: a.numpy() for k, a in arrays.items()}
    assert list(got) == list(start)
    for key, value in start.items():
        assert got[key].shape == value.shape, key
    counters = [k for k in start if k.endswith("num_batches_tracked")]
    assert (name == "resnet") == bool(counters)
    for key in counters:  # 3 batches of 10 on top of the start, exactly, and still int64
        assert got[key].dtype == start[key].dtype == np.int64 and got[key] == start[key] + 3
    means = [k for k in start if k.endswith("running_mean")]
    assert all(not np.allclose(got[k], start[k]) for k in means)  # the statistics moved
    moved = [k for k in start if start[k].dtype.kind == "f" and not np.allclose(got[k], start[k])]
    assert len(moved) > 0.5 * len([k for k in start if start[k].dtype.kind == "f"])
    restored = models.build(name)
    restored.load_state_dict(arrays.to_torch_state_dict())  # loads into the model as it is
