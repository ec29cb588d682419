"""Flower's deployment engine: a SuperLink and two SuperNodes on 127.0.0.1."""

import csv
import json
import shutil
import time

import pytest

pytest.importorskip("flwr")

from fedzip.fl.data import DataError, find_data_dir

try:
    find_data_dir()
except DataError:
    pytest.skip("Fashion-MNIST is not installed (make data)", allow_module_level=True)

from benchmarks.federation import Federation


@pytest.fixture
def federation(tmp_path, request):
    """A SuperLink and SuperNodes (benchmarks/federation.py), every process stopped afterwards.

    ``request.param``: the number of SuperNodes (default two), or a dict with
    ``nodes`` and ``secure`` (TLS and SuperNode authentication, one key more
    than nodes).
    """
    param = getattr(request, "param", 2)
    param = param if isinstance(param, dict) else {"nodes": param}
    count, secure = param["nodes"], param.get("secure", False)
    if secure and not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("scripts/make-credentials.sh needs openssl and ssh-keygen")
    fed = Federation(tmp_path, secure=secure, keys=count + 1).start()
    try:
        for i in range(count):
            fed.start_node(i, count)
        yield fed
    finally:
        fed.stop()
    assert all(p.poll() is not None for p in fed.processes)


def read_rows(out):
    try:
        with open(out / "metrics.csv") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def test_superlink_and_supernodes_carry_fedzip_payloads_both_ways(federation):
    tmp_path = federation.folder
    out = tmp_path / "results"
    run = federation.submit(
        f"rounds=3 out='{out}' downlink='fedzip-dap' downlink-keep=0.05 downlink-shared-start=true"
    )
    output, _ = run.communicate(timeout=420)
    assert run.returncode == 0, output[-3000:]
    deadline = time.monotonic() + 60
    while not (out / "accuracy.png").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        assert int(row["accepted"]) == 2 and int(row["failures"]) == 0
        assert float(row["ratio"]) > 50  # the uploads were FedZip payloads
    for row in rows[1:]:  # the nodes built the initial model: round 1 sent its checksum
        assert int(row["downlink_bytes"]) * 10 < int(row["downlink_raw_bytes"])
    assert float(rows[-1]["accuracy"]) != float(rows[0]["accuracy"])  # the aggregated model changed
    assert "FedZipStrategy: round 3: 2/2 replies accepted" in output


@pytest.mark.parametrize("federation", [3], indirect=True)
def test_a_supernode_that_dies_mid_run_does_not_stop_it(federation):
    out = federation.folder / "results"
    run = federation.submit(f"clients=3 rounds=4 min-clients=2 node-wait=30 round-timeout=60 out='{out}'")
    try:
        deadline = time.monotonic() + 300
        while len(read_rows(out)) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)  # until round 1 is done
        assert len(read_rows(out)) >= 2, (
            f"round 1 never finished: {run.stdout.read()[-3000:] if run.poll() is not None else ''}"
        )
        federation.kill(2)
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-3000:]
    deadline = time.monotonic() + 60
    while not (out / "accuracy.png").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = read_rows(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3, 4]
    assert int(rows[1]["accepted"]) == 3
    assert int(rows[-1]["accepted"]) == 2  # the survivors carried the last round
    assert all(int(r["accepted"]) >= 2 for r in rows[1:])


@pytest.mark.parametrize("federation", [{"nodes": 2, "secure": True}], indirect=True)
def test_tls_and_supernode_authentication(federation):
    """Over TLS with registered node keys the run works; a node with an unregistered key is refused."""
    tmp_path = federation.folder
    intruder = federation.start_node(2, 2, register=False, wait=False)  # key node-3 was never registered
    out = tmp_path / "results"
    run = federation.submit(f"rounds=2 out='{out}'")
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    rows = read_rows(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        # both registered nodes, not the intruder (the app samples every connected node)
        assert int(row["accepted"]) == 2 and int(row["failures"]) == 0
        assert float(row["ratio"]) > 50
    listed = federation.flwr("supernode", "list", "test", "--format", "json")
    registered = json.loads(listed.stdout)
    assert registered.get("success") is not False, listed.stdout
    assert len(_node_ids(registered)) == 2, listed.stdout  # the intruder's key is not among them
    link_log = (tmp_path / "superlink.log").read_text()
    assert link_log.count("Activated node_id") == 2
    assert '/v1/fleet/activate-node HTTP/1.1" 412' in link_log  # the intruder was turned away
    assert "Activated" not in intruder.log.read_text()
    assert intruder.process.poll() is None or intruder.process.returncode != 0


def _node_ids(value):
    """Every ``node-id``/``node_id`` value in a JSON document."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("node-id", "node_id")]
        return found + [i for v in value.values() for i in _node_ids(v)]
    if isinstance(value, list):
        return [i for v in value for i in _node_ids(v)]
    return []
