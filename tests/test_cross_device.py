"""Cross-device mechanics: catch-up downloads (chain, patch or dense, by bytes, exact), participation, no client state."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedzip
from conftest import FakeGrid
from fedzip.flower import FedZipStrategy, downlink, fedzip_mod, protocol, replica
from test_flower import context, make_client, to_record

pytestmark = pytest.mark.usefixtures("task_identity")


def model_of(rng):
    return {
        "w": rng.standard_normal((96, 64)).astype(np.float32),
        "b": np.zeros(64, np.float32),
        "steps": np.array(0, dtype=np.int64),  # an integer buffer: passes through
    }


def moved(rng, model, scale=0.01):
    out = {
        k: (v + scale * rng.standard_normal(v.shape).astype(v.dtype))
        for k, v in model.items()
        if k != "steps"
    }
    return {**out, "steps": model["steps"] + 1}


def catch_up(broadcaster, state, node):
    """Send ``node`` its download and apply it as the client does; the form and the bytes sent."""
    config, records = broadcaster.content_for(node, "arrays")
    content = RecordDict({"config": ConfigRecord(config), **records})
    sent = sum(r.count_bytes() for r in records.values())
    form = (
        "dense" if downlink.DOWN_MODEL in records else "patch" if downlink.DOWN_PATCH in records else "chain"
    )
    held = replica.receive(content, state)
    broadcaster.confirm(node, broadcaster.version)
    return form, sent, held


@pytest.mark.parametrize("away", [1, 2, 5, 12, 40])
@pytest.mark.parametrize(
    "down", [fedzip.FedZip(keep=0.02), fedzip.FedZip(rank=2, clusters=3)], ids=["top-z", "factors"]
)
def test_a_client_away_for_any_number_of_rounds_ends_with_exactly_the_servers_model(rng, away, down):
    model = model_of(rng)
    broadcaster = downlink.Broadcaster(down)
    broadcaster.advance(model)
    state = RecordDict()
    assert catch_up(broadcaster, state, 3)[0] == "dense"  # first contact
    for _ in range(away):
        model = moved(rng, model)
        broadcaster.advance(model)
    form, sent, held = catch_up(broadcaster, state, 3)
    assert downlink.checksum(held) == broadcaster.checksum  # bit for bit the server's replica
    assert held["steps"] == model["steps"]
    dense = broadcaster.dense_bytes()
    assert sent < dense * 1.05  # never much more than the dense model (framing aside)
    if away == 1:
        assert form == "chain"
    if isinstance(down.rank, int) and down.rank and away >= 12:
        # factors change every element each round: the patch is the dense model; the chain of
        # 12-40 small payloads is still smaller than either
        assert form == "chain"


def test_the_smallest_form_is_sent_and_the_history_is_bounded_by_the_models_size(rng):
    """Top-z downloads keep changing the same large elements: after enough missed rounds, replacing
    those elements (patch) is smaller than all the payloads that changed them (chain)."""
    model = model_of(rng)
    heavy = np.zeros_like(model["w"])
    heavy.reshape(-1)[:200] = 1.0  # the same 200 elements move most, round after round
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.03, clusters=8))
    broadcaster.advance(model)
    every, returning = RecordDict(), RecordDict()
    catch_up(broadcaster, every, 0)
    catch_up(broadcaster, returning, 1)
    produced = []  # every payload made, kept or not
    for _ in range(60):
        noise = 1e-4 * rng.standard_normal(heavy.shape).astype(np.float32)
        model = {**model, "w": model["w"] + 0.05 * heavy + noise}
        broadcaster.advance(model)
        produced.append(len(broadcaster._payloads[-1]))
        assert sum(map(len, broadcaster._payloads)) <= broadcaster.dense_bytes()
        form, _, held = catch_up(broadcaster, every, 0)
        assert form == "chain" and downlink.checksum(held) == broadcaster.checksum
    _, patch_bytes = downlink.patch_entries(broadcaster.replica, broadcaster._changed, 0)
    assert patch_bytes < sum(produced)  # replacing the changed elements beats the 60 payloads
    form, sent, held = catch_up(broadcaster, returning, 1)
    assert form == "patch" and downlink.checksum(held) == broadcaster.checksum
    assert sent < broadcaster.dense_bytes() / 4


def test_history_zero_or_capped_still_catches_up_exactly(rng):
    model = model_of(rng)
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.05), history=0)
    broadcaster.advance(model)
    state = RecordDict()
    catch_up(broadcaster, state, 1)
    for _ in range(3):
        model = moved(rng, model)
        broadcaster.advance(model)
        form, _, held = catch_up(broadcaster, state, 1)
        assert form in ("patch", "dense") and downlink.checksum(held) == broadcaster.checksum
    with pytest.raises(ValueError, match="downlink_history"):
        downlink.Broadcaster(fedzip.FedZip(), history=-1)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: {**p, "i:w": np.full_like(p["i:w"], 10**7)},
        lambda p: {**p, "i:w": p["i:w"][:-1]},
        lambda p: {"v:nope": p["v:w"]},
        lambda p: {"i:w": p["i:w"]},
        lambda p: {"v:w": p["v:w"], "m:w": np.zeros(3, np.uint8)},
        lambda p: {"v:w": p["v:w"][:5]},
    ],
    ids=["index-out-of-range", "count", "unknown-name", "indices-alone", "bad-mask", "short-values"],
)
def test_a_malformed_patch_is_refused_and_the_copy_dropped(rng, tamper):
    model = model_of(rng)
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.01), history=0)
    broadcaster.advance(model)
    state = RecordDict()
    catch_up(broadcaster, state, 1)
    broadcaster.advance(moved(rng, model))
    config, records = broadcaster.content_for(1, "arrays")
    patch = protocol.from_record(records[downlink.DOWN_PATCH])
    assert "i:w" in patch  # 1% of w changed: indices, not a mask
    records[downlink.DOWN_PATCH] = protocol.to_record(tamper(patch))
    with pytest.raises(downlink.DownlinkError, match="dropped"):
        replica.receive(RecordDict({"config": ConfigRecord(config), **records}), state)
    assert replica.STATE_MODEL not in state.array_records  # the next download is dense


def test_a_mask_patch_round_trips():
    """Half the elements changed: a bit mask costs less than their indices."""
    model = {"w": np.zeros((40, 40), np.float32)}
    changed = {"w": np.where(np.arange(1600) % 2 == 0, 3, 0).astype(np.int32)}
    current = {"w": np.arange(1600, dtype=np.float32).reshape(40, 40)}
    patch, size = downlink.patch_entries(current, changed, 2)
    assert set(patch) == {"v:w", "m:w"} and size < current["w"].nbytes
    replica.apply_patch(model, patch)
    expected = np.where(np.arange(1600) % 2 == 0, np.arange(1600), 0).reshape(40, 40)
    assert np.array_equal(model["w"], expected)


def test_the_strategy_counts_participation_and_what_returning_clients_received(rng):
    model = {k: v for k, v in model_of(rng).items() if k != "steps"}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor=fedzip.FedZip(keep=0.1),
        downlink=fedzip.FedZip(keep=0.05),
    )
    contexts = {n: context(n) for n in range(4)}
    delta = {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
    arrays = to_record(model)
    plan = {1: [0, 1], 2: [0, 2], 3: [0], 4: [0, 1], 5: [2, 3]}
    for server_round, nodes in plan.items():
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        replies = [
            fedzip_mod(
                Message(
                    RecordDict(dict(m.content.items())),
                    dst_node_id=m.metadata.dst_node_id,
                    message_type=m.metadata.message_type,
                ),
                contexts[m.metadata.dst_node_id],
                make_client(delta, 10),
            )
            for m in messages
        ]
        assert not any(r.has_error() for r in replies)
        arrays, _ = strategy.aggregate_train(server_round, replies)
    stats = {s.round: s for s in strategy.history}
    assert [stats[r].sampled for r in plan] == [2, 2, 1, 2, 2]
    assert [stats[r].first_visits for r in plan] == [2, 1, 0, 0, 1]
    assert sorted(stats[4].gaps) == [1, 3] and stats[4].mean_gap == 2.0  # node 0 every round, node 1 after 3
    assert stats[5].gaps == [3] and stats[1].gaps == [] and np.isnan(stats[1].mean_gap)
    # round 4: node 1 returns after missing 2 and 3 (a chain or a patch, not the model)
    assert stats[4].dense_downloads == 0 and stats[4].chain_downloads + stats[4].patch_downloads == 1
    assert 0 < stats[4].returning_bytes < stats[4].downlink_bytes
    assert stats[5].dense_downloads == 1  # node 3, new
    assert isinstance(arrays, ArrayRecord)  # the run went on


@pytest.mark.parametrize("server", ["fedavg", "fedavgm"])
def test_without_error_feedback_or_downloads_no_client_keeps_anything(rng, server):
    """The stateless mode: compressed uploads without error feedback, the model downloaded as it is.
    A node's state stays empty whatever the rounds, and the server's momentum (FedAvgM) is the only
    memory of past rounds."""
    from flwr.serverapp.strategy import FedAvgM

    model = {k: v for k, v in model_of(rng).items() if k != "steps"}
    inner = (FedAvg if server == "fedavg" else FedAvgM)(min_available_nodes=1, min_train_nodes=1)
    strategy = FedZipStrategy(inner, compressor=fedzip.FedZip(rank=2, clusters=3))
    contexts = {n: context(n) for n in range(6)}
    arrays = to_record(model)
    for server_round, nodes in enumerate([[0, 1], [2, 3], [0, 4], [5, 1]], start=1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            delta = {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
            msg = Message(
                RecordDict(dict(m.content.items())), dst_node_id=node, message_type=m.metadata.message_type
            )
            replies.append(fedzip_mod(msg, contexts[node], make_client(delta, 10)))
        assert not any(r.has_error() for r in replies)
        new, _ = strategy.aggregate_train(server_round, replies)
        assert not np.allclose(protocol.from_record(new)["w"], protocol.from_record(arrays)["w"])
        arrays = new
        assert all(len(c.state) == 0 for c in contexts.values())
    assert strategy.broadcaster is None


def test_a_patch_carries_dtypes_the_strategy_changed(rng):
    """FedAvg averages an integer buffer into float64: a client brought up to date by a patch holds
    the server's dtypes and values exactly."""
    model = {"w": rng.standard_normal((50, 40)).astype(np.float32), "count": np.array(3, dtype=np.int64)}
    broadcaster = downlink.Broadcaster(fedzip.FedZip(keep=0.02), history=0)
    broadcaster.advance(model)
    state = RecordDict()
    catch_up(broadcaster, state, 1)
    for step in range(4):
        model = {"w": (model["w"] + 0.01 * step).astype(np.float64), "count": np.array(3.5 + step)}
        broadcaster.advance(model)
        if step == 0:  # every element of w changed (its dtype): the patch is the model, dense wins
            form, _, held = catch_up(broadcaster, state, 1)
            assert form == "dense" and held["w"].dtype == np.float64
    form, _, held = catch_up(broadcaster, state, 1)  # three rounds later: a few elements changed
    assert form == "patch" and downlink.checksum(held) == broadcaster.checksum
    assert held["w"].dtype == np.float64 and held["count"] == 6.5


def exact_payload(update):
    return fedzip.get_compressor("none").encode(update)


def test_server_memory_fedvarp_corrects_each_update_with_the_clients_previous_one():
    """FedVARP: u - y_previous + mean(y) before the round; the memory holds payloads and one sum."""
    from fedzip.flower.memory import UpdateMemory

    memory = UpdateMemory("fedvarp")
    a1, b1 = {"w": np.full(4, 1.0, np.float32)}, {"w": np.full(4, 3.0, np.float32)}
    first = memory.adjust([(1, 1.0, exact_payload(a1), a1), (2, 3.0, exact_payload(b1), b1)])
    # nothing remembered yet: the updates are used as they are
    assert np.array_equal(first[0]["w"], a1["w"]) and np.array_equal(first[1]["w"], b1["w"])
    assert np.allclose(memory.mean()["w"], (1 * 1 + 3 * 3) / 4)  # weighted by examples
    a2, c2 = {"w": np.full(4, 2.0, np.float32)}, {"w": np.full(4, 10.0, np.float32)}
    second = memory.adjust([(1, 1.0, exact_payload(a2), a2), (3, 2.0, exact_payload(c2), c2)])
    mean_before = 2.5
    assert np.allclose(second[0]["w"], 2.0 - 1.0 + mean_before)  # node 1: its previous update was 1
    assert np.allclose(second[1]["w"], 10.0 - 0.0 + mean_before)  # node 3: a first turn
    assert np.allclose(memory.mean()["w"], (1 * 2 + 3 * 3 + 2 * 10) / 6)  # every client's latest
    assert second[0]["w"].dtype == np.float32
    assert memory.nbytes() < 3 * 100 + 4 * 8 + 64  # three small payloads and one float64 sum


def test_server_memory_mifa_sends_the_mean_of_every_clients_latest_update():
    from fedzip.flower.memory import UpdateMemory

    memory = UpdateMemory("mifa")
    a, b = {"w": np.full(3, 4.0, np.float32)}, {"w": np.full(3, -2.0, np.float32)}
    memory.adjust([(1, 1.0, exact_payload(a), a)])
    (out,) = memory.adjust([(2, 1.0, exact_payload(b), b)])
    assert np.allclose(out["w"], 1.0)  # node 1's update still counts while node 2 trains
    with pytest.raises(ValueError, match="server_memory"):
        UpdateMemory("saga")


def test_with_server_memory_the_model_moves_by_fedvarps_step_and_clients_keep_nothing(rng):
    from flwr.serverapp.strategy import FedAvg

    model = {"w": rng.standard_normal((8, 4)).astype(np.float32)}
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1),
        compressor="none",
        server_memory="fedvarp",
        norm_bound=None,
    )
    contexts = {n: context(n) for n in range(3)}
    steps = {0: 0.1, 1: 0.3, 2: -0.2}  # each node always trains the same step
    arrays = to_record(model)
    expected = model["w"].astype(np.float64)
    remembered: dict[int, float] = {}
    for server_round, nodes in enumerate([[0, 1], [2, 0], [1, 2]], start=1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(nodes)))
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            msg = Message(
                RecordDict(dict(m.content.items())), dst_node_id=node, message_type=m.metadata.message_type
            )
            replies.append(
                fedzip_mod(
                    msg, contexts[node], make_client({"w": np.full((8, 4), steps[node], np.float32)}, 10)
                )
            )
        mean_before = np.mean(list(remembered.values())) if remembered else 0.0
        step = np.mean([steps[n] - remembered.get(n, 0.0) + mean_before for n in nodes])
        for n in nodes:
            remembered[n] = steps[n]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        expected = expected + step
        assert np.allclose(protocol.from_record(arrays)["w"], expected, atol=1e-5)
        assert all(len(c.state) == 0 for c in contexts.values())
    assert set(strategy.memory.payloads) == {0, 1, 2}


def test_server_memory_travels_through_the_command_line_and_plans(tmp_path):
    from fedzip.cli import build_parser
    from fedzip.cli.experiments import experiment_config
    from fedzip.fl.config import ExperimentConfig
    from fedzip.fl.plan import load_plan

    args = build_parser().parse_args(
        ["run", "--server-memory", "fedvarp", "--rank", "2", "--codec", "fedzip-dap"]
    )
    cfg = experiment_config(args, "fedzip-dap")
    assert cfg.server.memory == "fedvarp" and cfg.label == "fedzip-dap+fedvarp"
    assert ExperimentConfig().server.memory == ""  # off unless asked: full participation unchanged
    with pytest.raises(ValueError, match="server_memory"):
        ExperimentConfig(server={"memory": "saga"})
    plan = tmp_path / "p.toml"
    plan.write_text(
        '[experiment]\nmodel = "mlp"\n\n[[run]]\nname = "m"\nserver = {memory = "mifa", fraction = 0.5}\n'
    )
    (run,) = load_plan(plan, tmp_path / "runs").runs
    assert run.config.server.memory == "mifa" and run.config.server.fraction == 0.5


def test_ef21_clients_upload_their_update_minus_the_estimate_the_server_holds(rng):
    """server_memory="ef21": a client's second turn brings it its estimate; it uploads the difference,
    and the server's new estimate of it is estimate + difference, closer to the update than one
    compressed upload. Clients keep nothing; every reply becomes the mean of all estimates."""
    from flwr.serverapp.strategy import FedAvg

    model = {"w": rng.standard_normal((64, 48)).astype(np.float32), "b": np.zeros(48, np.float32)}
    codec = fedzip.FedZip(rank=1, clusters=8)
    strategy = FedZipStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1), compressor=codec, server_memory="ef21"
    )
    with pytest.raises(ValueError, match="replaces error feedback"):
        FedZipStrategy(FedAvg(), compressor=codec, error_feedback=True, server_memory="ef21")
    contexts = {n: context(n) for n in range(2)}
    # each node trains the same (rank-3) update at every turn
    steps = {
        n: {
            "w": (rng.standard_normal((64, 3)) @ rng.standard_normal((3, 48))).astype(np.float32) * 0.01,
            "b": 0.01 * rng.standard_normal(48).astype(np.float32),
        }
        for n in range(2)
    }
    arrays = to_record(model)
    errors = []
    for server_round in range(1, 5):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid([0, 1])))
        assert all((protocol.ESTIMATE in m.content) == (server_round > 1) for m in messages)
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            msg = Message(
                RecordDict(dict(m.content.items())), dst_node_id=node, message_type=m.metadata.message_type
            )
            replies.append(fedzip_mod(msg, contexts[node], make_client(steps[node], 10)))
        assert not any(r.has_error() for r in replies)
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert all(len(c.state) == 0 for c in contexts.values())
        held = strategy.memory._held(0)
        errors.append(float(np.linalg.norm(held["w"] - steps[0]["w"]) / np.linalg.norm(steps[0]["w"])))
    # rank-1 uploads of a rank-3 update: the estimate gains a rank a turn (up to the codec's
    # re-compression of the estimate), so it gets closer than one upload does
    assert errors[1] < 0.9 * errors[0]
    # a malformed estimate is an error reply, not a crash
    (message,) = strategy.configure_train(5, arrays, ConfigRecord({}), FakeGrid([0]))
    message.content[protocol.ESTIMATE] = protocol.payload_record(b"garbage")
    reply = fedzip_mod(message, contexts[0], make_client(steps[0], 10))
    assert reply.has_error() and "could not encode" in reply.error.reason


def test_a_config_refuses_ef21_with_error_feedback():
    from fedzip.fl.config import ExperimentConfig

    with pytest.raises(ValueError, match="replaces error feedback"):
        ExperimentConfig(server={"memory": "ef21"}, error_feedback={"enabled": True})
    assert ExperimentConfig(server={"memory": "ef21"}).label == "fedzip-dap+ef21"


def test_an_entry_whose_client_left_is_forgotten_after_three_mean_gaps():
    """A client that sent one (possibly hostile) update and left stops moving the model: its entry
    leaves the memory once older than STALE_TURNS times the mean gap between turns."""
    from fedzip.flower.memory import STALE_TURNS, UpdateMemory

    memory = UpdateMemory("mifa")
    leaver = {"w": np.full(2, 100.0, np.float32)}
    memory.adjust([(9, 1.0, exact_payload(leaver), leaver)], server_round=1)
    steady = {"w": np.full(2, 1.0, np.float32)}
    means = []
    for server_round in range(2, 20):
        node = server_round % 2  # nodes 0 and 1 take turns: a gap of 2 rounds
        (out,) = memory.adjust([(node, 1.0, exact_payload(steady), steady)], server_round)
        means.append((server_round, float(out["w"][0])))
    assert STALE_TURNS == 3.0
    # the leaver counts until its entry is older than 3 x 2 rounds, then never again
    assert all(value > 1.0 for r, value in means if r - 1 <= 6)
    assert all(value == pytest.approx(1.0) for r, value in means if r - 1 > 6)
    assert 9 not in memory.payloads and set(memory.rounds) == {0, 1}
