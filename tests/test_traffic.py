"""The traffic tracker: bytes per round, node and direction around any strategy, compressed or not."""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp.strategy import FedAdam, FedAvg

import fedzip
from conftest import FakeGrid
from fedzip.energy import get_link
from fedzip.flower import FedZipStrategy, TrafficTracker, fedzip_mod, protocol

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = 3
CONTEXTS: dict[int, Context] = {}  # each node's, kept across rounds as a SuperNode keeps it


def model(rng):
    return {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}


def record(arrays):
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def client(delta, with_mod):
    def app(msg, context):
        received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        trained = record({k: received[k] + delta[k] for k in received})
        content = RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 10})})
        return Message(content, reply_to=msg)

    if not with_mod:
        return lambda msg, context: app(msg, context)
    return lambda msg, context: fedzip_mod(msg, context, app)


def unreachable(msg):
    """The reply the SuperLink makes for a node that stopped sending heartbeats: its source is the link."""
    reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "Node Unavailable"), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    return reply


def train_round(strategy, weights, rng, server_round=1, with_mod=False, failing=(), corrupt=(), gone=()):
    """Send the round's train messages to NODES nodes and return the replies the server gets."""
    sent = strategy.configure_train(server_round, record(weights), ConfigRecord({}), FakeGrid(NODES))
    messages = sorted(sent, key=lambda m: m.metadata.dst_node_id)
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        msg.metadata.__dict__["_message_id"] = f"{server_round}-{node}"  # as a Grid sets it when sending
        if node in failing:
            replies.append(Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"), reply_to=msg))
            continue
        if node in gone:
            replies.append(unreachable(msg))
            continue
        copy = Message(RecordDict(dict(msg.content.items())), dst_node_id=node, message_type="train")
        context = CONTEXTS.setdefault(
            node, Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
        )
        delta = {k: (rng.standard_normal(v.shape) * 0.01).astype(v.dtype) for k, v in weights.items()}
        reply = client(delta, with_mod)(copy, context)
        if node in corrupt:
            payload = protocol.payload_bytes(reply.content.array_records[protocol.PAYLOAD])
            reply.content[protocol.PAYLOAD] = protocol.payload_record(payload[:-5] + b"oops!")
        replies.append(reply)
    return messages, replies


def sizes(messages):
    return [sum(r.count_bytes() for r in m.content.values()) for m in messages]


def test_a_plain_strategy_is_counted_message_by_message(rng, tmp_path):
    weights = model(rng)
    plain = FedAvg(min_available_nodes=NODES, fraction_evaluate=1.0)
    tracker = TrafficTracker(plain, out=tmp_path, link="wifi")
    messages, replies = train_round(tracker, weights, rng, failing={2})
    down, up = sizes(messages), sizes(replies[:2])
    arrays, _ = tracker.aggregate_train(1, replies)
    assert arrays is not None
    rows = [t for _, phase, t in tracker.rows if phase == "train"]
    assert [t.node for t in rows] == [0, 1, 2]
    assert [t.down_bytes for t in rows] == down and all(d > record(weights).count_bytes() for d in down)
    assert [t.up_bytes for t in rows[:2]] == up and rows[2].up_bytes == 0
    assert [t.status for t in rows] == ["accepted", "accepted", "rejected"] and rows[2].reason == "boom"
    total = tracker.phases[-1]
    assert (total.nodes, total.replies, total.accepted) == (3, 3, 2)
    assert total.ratio == 1.0 and total.accepted_up_bytes == total.up_bytes == sum(up)
    link = get_link("wifi")
    expected = sum(link.round_joules(t.down_bytes, t.up_bytes, t.seconds).total for t in rows)
    assert total.joules == pytest.approx(expected) and total.joules > 0

    # evaluation: the model down, metrics alone up
    evaluate = list(tracker.configure_evaluate(1, arrays, ConfigRecord({}), FakeGrid(NODES)))
    metrics = [
        Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "accuracy": 0.5})}), reply_to=m)
        for m in evaluate
    ]
    tracker.aggregate_evaluate(1, metrics)
    assert tracker.phases[-1].phase == "evaluate" and tracker.phases[-1].up_bytes < 200 * NODES

    with open(tmp_path / "traffic.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["phase"], r["node"]) for r in table] == [("train", "0"), ("train", "1"), ("train", "2")] + [
        ("evaluate", str(n)) for n in range(NODES)
    ]
    assert table[2]["status"] == "rejected" and table[2]["reason"] == "boom"
    report = json.loads((tmp_path / "traffic.json").read_text())
    assert report["link"] == "wifi"
    assert report["total"]["train"]["up_bytes"] == sum(up)
    assert report["total"]["all"]["down_bytes"] == sum(down) + sum(sizes(evaluate))
    assert report["nodes"]["0"]["exchanges"] == 2
    assert "train" in tracker.table() and "evaluate" in tracker.table()


def test_around_fedzip_it_reports_fedzips_own_counts(rng):
    CONTEXTS.clear()
    weights = model(rng)
    inner = FedZipStrategy(
        FedAvg(min_available_nodes=NODES),
        compressor=fedzip.FedZip(keep=0.05),
        downlink=fedzip.FedZip(keep=0.1),
    )
    tracker = TrafficTracker(inner)
    for server_round in (1, 2):
        messages, replies = train_round(tracker, weights, rng, server_round, with_mod=True, corrupt={1})
        carried = sizes(replies)
        tracker.aggregate_train(server_round, replies)
        stats, total = inner.history[-1], tracker.phases[-1]
        assert (total.round, total.accepted, total.replies) == (server_round, 2, 3)
        assert total.accepted_up_bytes == stats.uplink_bytes == carried[0] + carried[2]
        assert total.up_bytes == sum(carried)  # the rejected reply travelled too
        assert total.up_raw_bytes == stats.raw_bytes and total.ratio == pytest.approx(stats.ratio)
        assert total.down_bytes == stats.downlink_bytes == sum(sizes(messages))
        assert total.down_raw_bytes == stats.downlink_raw_bytes
        rejected = [t for r, _, t in tracker.rows if r == server_round and t.status == "rejected"]
        assert [t.node for t in rejected] == [1] and "checksum" in rejected[0].reason
    assert tracker.phases[1].down_bytes * 3 < tracker.phases[1].down_raw_bytes  # downloads compressed too
    assert tracker.totals("train").ratio > 5


def test_where_the_tracker_may_go_and_what_it_refuses():
    with pytest.raises(ValueError, match="outermost"):
        FedZipStrategy(TrafficTracker(FedAvg()))
    with pytest.raises(ValueError, match="cannot wrap another TrafficTracker"):
        TrafficTracker(TrafficTracker(FedAvg()))
    with pytest.raises(ValueError, match="must be a flwr"):
        TrafficTracker("FedAvg")
    with pytest.raises(ValueError, match="unknown link"):
        TrafficTracker(FedAvg(), link="5g")
    tracker = TrafficTracker(FedAdam(eta=0.1))
    tracker.fraction_train = 0.3  # the inner strategy's settings through the wrapper
    assert tracker.strategy.fraction_train == 0.3 and tracker.eta == 0.1
    assert tracker.table().startswith("Traffic (lte): 0 rounds")


@pytest.mark.parametrize("compressed", [False, True])
def test_a_reply_the_superlink_made_for_an_unreachable_node_is_counted_for_that_node(rng, compressed):
    CONTEXTS.clear()
    weights = model(rng)
    inner = FedAvg(min_available_nodes=NODES)
    if compressed:
        inner = FedZipStrategy(inner, compressor=fedzip.FedZip(keep=0.05), downlink=fedzip.FedZip(keep=0.1))
    tracker = TrafficTracker(inner)
    _, replies = train_round(tracker, weights, rng, with_mod=compressed, gone={2})
    assert replies[2].metadata.src_node_id == SUPERLINK_NODE_ID
    tracker.aggregate_train(1, replies)
    rows = {t.node: t for _, _, t in tracker.rows}
    assert sorted(rows) == [0, 1, 2]  # node 1 answered for itself only, though the link's id is 1 too
    assert rows[2].status == "rejected" and rows[2].reason == "Node Unavailable" and rows[2].down_bytes > 0
    assert [rows[n].status for n in (0, 1)] == ["accepted", "accepted"]
    if compressed:
        assert inner.history[-1].failures == ["node 2: Node Unavailable"]
        assert inner.broadcaster.nodes[2] is None  # its copy is unknown: the next download is dense
        assert inner.broadcaster.nodes[1] is not None
