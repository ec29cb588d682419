"""A Flower deployment on this machine: one SuperLink and SuperNodes on 127.0.0.1, as processes.

Used by tests/test_deployment.py and benchmarks/load_supernodes.py. Every process
runs in its own process group (its children are stopped with it) and logs to a
file in ``folder``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "deployment"
SCRIPTS = ROOT / "scripts"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Node:
    index: int  # its partition
    process: subprocess.Popen
    log: Path
    port: int


class Federation:
    """Start with :meth:`start`; :meth:`stop` ends every process it started.

    ``secure``: TLS and SuperNode authentication, credentials from
    scripts/make-credentials.sh, every node's key registered with
    ``flwr supernode register`` (``credentials`` keys for ``keys`` nodes).
    """

    def __init__(self, folder: Path, secure: bool = False, keys: int = 2) -> None:
        self.folder = Path(folder)
        self.secure = secure
        self.keys = keys
        self.processes: list[subprocess.Popen] = []
        self.nodes: dict[int, Node] = {}
        self.link: subprocess.Popen | None = None
        self.link_port = 0
        self.home = self.folder / "flwr-home"
        self.creds = self.folder / "credentials"
        # SuperLink and SuperNodes start flower-superexec by name: it must be on PATH.
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _spawn(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.folder / f"{name}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=self.folder,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: children are stopped with it
            )
        self.processes.append(process)
        return process, log

    def start(self) -> Federation:
        """The SuperLink, and ``flwr``'s configuration pointing at it (federation ``test``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.secure:
            subprocess.run(
                ["bash", str(SCRIPTS / "make-credentials.sh"), str(self.creds), str(self.keys)],
                check=True,
                capture_output=True,
            )
            security = [
                "--ssl-ca-certfile",
                str(self.creds / "ca.crt"),
                "--ssl-certfile",
                str(self.creds / "superlink.crt"),
                "--ssl-keyfile",
                str(self.creds / "superlink.key"),
                "--enable-supernode-auth",
            ]
            connection = f'root-certificates = "{self.creds / "ca.crt"}"\n'
        else:
            security, connection = ["--insecure"], "insecure = true\n"
        self.link_port = free_port()
        self.link, log = self._spawn(
            "superlink",
            "flower-superlink",
            *security,
            "--port",
            str(self.link_port),
            "--disable-runtime-dependency-installation",
        )
        wait_for_port(self.link_port, self.link, log)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.link_port}"\n'
            + connection
        )
        return self

    def start_node(self, index: int, partitions: int, register: bool = True, wait: bool = True) -> Node:
        """SuperNode for partition ``index``; in a secure federation it uses key node-(index+1)."""
        security = ["--insecure"]
        if self.secure:
            key = self.creds / f"node-{index + 1}"
            if register:
                self.flwr("supernode", "register", str(key) + ".pub", "test")
            security = [
                "--root-certificates",
                str(self.creds / "ca.crt"),
                "--auth-supernode-private-key",
                str(key),
            ]
        port = free_port()
        starts = sum(1 for p in self.folder.glob(f"supernode{index}*.log"))
        process, log = self._spawn(
            f"supernode{index}" + (f"-{starts}" if starts else ""),  # a restart logs beside the first
            "flower-supernode",
            *security,
            "--superlink",
            f"127.0.0.1:{self.link_port}",
            "--port",
            str(port),
            "--node-config",
            f"partition-id={index} num-partitions={partitions}",
        )
        node = self.nodes[index] = Node(index, process, log, port)
        if wait:
            wait_for_port(port, process, log)
        return node

    def kill(self, index: int) -> None:
        """SIGKILL a SuperNode and everything it started, as a machine that loses power."""
        node = self.nodes[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=self.folder,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(self, run_config: str, app: Path = APP, **popen) -> subprocess.Popen:
        """``flwr run`` of ``app`` (copied into the folder) with ``run_config``, streaming its log."""
        copy = self.folder / "app"
        shutil.copytree(app, copy, dirs_exist_ok=True)
        command = [str(BIN / "flwr"), "run", str(copy), "test", "--stream", "--run-config", run_config]
        return subprocess.Popen(
            command,
            env=self.env,
            cwd=self.folder,
            stdout=popen.pop("stdout", subprocess.PIPE),
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
