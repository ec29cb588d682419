"""Flower's deployment engine: a SuperLink and two SuperNodes on 127.0.0.1."""

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedzip.fl.data import DataError, find_data_dir

try:
    find_data_dir()
except DataError:
    pytest.skip("Fashion-MNIST is not installed (make data)", allow_module_level=True)

APP = Path(__file__).resolve().parents[1] / "examples" / "deployment"
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, log, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port}")


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def federation(tmp_path, request):
    """Start a SuperLink and SuperNodes; stop every process afterwards.

    ``request.param``: the number of SuperNodes (default two), or a dict with
    ``nodes`` and ``secure`` (TLS and SuperNode authentication, credentials from
    scripts/make-credentials.sh, every node's key registered with
    ``flwr supernode register``). Yields the environment for ``flwr``, the
    working folder, the SuperNode processes and a function that starts one more.
    """
    param = getattr(request, "param", 2)
    param = param if isinstance(param, dict) else {"nodes": param}
    count, secure = param["nodes"], param.get("secure", False)
    processes = []
    nodes = []
    home = tmp_path / "flwr-home"
    home.mkdir()
    # SuperLink and SuperNodes start flower-superexec by name: it must be on PATH.
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(name, *args):
        log = tmp_path / f"{name}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=tmp_path,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: children are stopped with it
            )
        processes.append(process)
        return process, log

    creds = tmp_path / "credentials"
    if secure and not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("scripts/make-credentials.sh needs openssl and ssh-keygen")
    if secure:
        subprocess.run(
            ["bash", str(SCRIPTS / "make-credentials.sh"), str(creds), str(count + 1)],
            check=True,
            capture_output=True,
        )
        link_security = [
            "--ssl-ca-certfile",
            str(creds / "ca.crt"),
            "--ssl-certfile",
            str(creds / "superlink.crt"),
            "--ssl-keyfile",
            str(creds / "superlink.key"),
            "--enable-supernode-auth",
        ]
        connection = f'root-certificates = "{creds / "ca.crt"}"\n'
    else:
        link_security = ["--insecure"]
        connection = "insecure = true\n"
    link_port = free_port()
    link, link_log = start(
        "superlink",
        "flower-superlink",
        *link_security,
        "--port",
        str(link_port),
        "--disable-runtime-dependency-installation",
    )
    wait_for_port(link_port, link, link_log)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link_port}"\n{connection}'
    )

    def start_node(i, register=True):
        """SuperNode ``i`` (partition i); in a secure federation it uses key node-(i+1)."""
        security = ["--insecure"]
        if secure:
            key = creds / f"node-{i + 1}"
            if register:
                subprocess.run(
                    [str(BIN / "flwr"), "supernode", "register", str(key) + ".pub", "test"],
                    env=env,
                    cwd=tmp_path,
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
            security = [
                "--root-certificates",
                str(creds / "ca.crt"),
                "--auth-supernode-private-key",
                str(key),
            ]
        node_port = free_port()
        node, node_log = start(
            f"supernode{i}",
            "flower-supernode",
            *security,
            "--superlink",
            f"127.0.0.1:{link_port}",
            "--port",
            str(node_port),
            "--node-config",
            f"partition-id={i} num-partitions={count}",
        )
        return node, node_log, node_port

    for i in range(count):
        node, node_log, node_port = start_node(i)
        wait_for_port(node_port, node, node_log)
        nodes.append(node)
    yield env, tmp_path, nodes, start_node
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert all(p.poll() is not None for p in processes)


def submit(env, tmp_path, run_config, **kwargs):
    app = tmp_path / "app"
    shutil.copytree(APP, app, dirs_exist_ok=True)
    command = [str(BIN / "flwr"), "run", str(app), "test", "--stream", "--run-config", run_config]
    return subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def read_rows(out):
    try:
        with open(out / "metrics.csv") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def test_superlink_and_supernodes_carry_fedzip_payloads_both_ways(federation):
    env, tmp_path, *_ = federation
    out = tmp_path / "results"
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    result = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            str(app),
            "test",
            "--stream",
            "--run-config",
            f"rounds=3 out='{out}' downlink='fedzip-dap' downlink-keep=0.05 downlink-shared-start=true",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
    assert "FedZipStrategy: round 3: 2/2 replies accepted" in result.stdout + result.stderr


@pytest.mark.parametrize("federation", [3], indirect=True)
def test_a_supernode_that_dies_mid_run_does_not_stop_it(federation):
    env, tmp_path, nodes, _ = federation
    out = tmp_path / "results"
    config = f"clients=3 rounds=4 min-clients=2 node-wait=30 round-timeout=60 out='{out}'"
    run = submit(env, tmp_path, config)
    try:
        deadline = time.monotonic() + 300
        while len(read_rows(out)) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)  # until round 1 is done
        assert len(read_rows(out)) >= 2, (
            f"round 1 never finished: {run.stdout.read()[-3000:] if run.poll() is not None else ''}"
        )
        os.killpg(nodes[2].pid, signal.SIGKILL)
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
    env, tmp_path, _, start_node = federation
    intruder, intruder_log, _ = start_node(2, register=False)  # key node-3 was never registered
    out = tmp_path / "results"
    run = submit(env, tmp_path, f"rounds=2 out='{out}'")
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    rows = read_rows(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        # both registered nodes, not the intruder (the app samples every connected node)
        assert int(row["accepted"]) == 2 and int(row["failures"]) == 0
        assert float(row["ratio"]) > 50
    listed = subprocess.run(
        [str(BIN / "flwr"), "supernode", "list", "test", "--format", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    registered = json.loads(listed.stdout)
    assert registered.get("success") is not False, listed.stdout
    assert len(_node_ids(registered)) == 2, listed.stdout  # the intruder's key is not among them
    link_log = (tmp_path / "superlink.log").read_text()
    assert link_log.count("Activated node_id") == 2
    assert '/v1/fleet/activate-node HTTP/1.1" 412' in link_log  # the intruder was turned away
    assert "Activated" not in intruder_log.read_text()
    assert intruder.poll() is None or intruder.returncode != 0


def _node_ids(value):
    """Every ``node-id``/``node_id`` value in a JSON document."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("node-id", "node_id")]
        return found + [i for v in value.values() for i in _node_ids(v)]
    if isinstance(value, list):
        return [i for v in value for i in _node_ids(v)]
    return []
