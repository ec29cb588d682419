"""Compressed downloads: the server sends what changed, every client holds the same model.

The server keeps two models: the exact global model (its strategy's) and the
*replica*, the copy every synchronised client holds. Each round it compresses
``global - replica`` with the downlink compressor and adds what the payload
carries to the replica. Whatever compression left out stays in that
difference and is sent in later rounds: server-side error feedback without a
separate residual. Clients train from the replica; the server applies their
updates to the exact model.

Versions: the replica after round r's broadcast is version r. The server keeps
the last ``history`` payloads. A client that holds an older version gets the
payloads it missed, in order; one whose version is unknown (new, restarted,
failed, or behind by more than ``history``) gets the replica itself, dense.
Every download carries the replica's checksum: a client whose copy does not
match refuses to train (an error reply naming the cause), drops its copy, and
is sent the dense replica next time. No client ever trains on a model the
server does not hold.

Shared start: the dense first download is most of a short run's downlink bytes
(it caps a run's download ratio at its number of rounds). When every client
can build the initial model itself (the same code and seed, bit for bit),
``Broadcaster(shared_start=True)`` assumes a node it has not heard from holds
version 0, and :func:`shared_start_mod` builds that copy on the client. Round 1
then sends only the checksum; later newcomers get the payloads since version 0
while they are in the history. A client whose build differs fails the checksum
once and is sent the dense model, as above.

Message layout (server -> client), added to the train message's ConfigRecord:

    DOWN_VERSION   int, the version the download brings the client to
    DOWN_BASE      int, the version the payloads apply to (-1: dense)
    DOWN_CHECKSUM  int, CRC32 of the replica at DOWN_VERSION
    DOWN_KEY       str, the ArrayRecord key the model goes back under

and, instead of the weights' ArrayRecord, either DOWN_MODEL (the dense
replica) or DOWN_PAYLOADS ({"0": uint8, "1": uint8, ...}: the payloads in
order) plus DOWN_PASSTHROUGH (the current non-float tensors) when there are any.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from ..abc import Compressor
from ..payload import decode
from . import protocol

DOWN_VERSION = "fedzip.down.version"
DOWN_BASE = "fedzip.down.base"
DOWN_CHECKSUM = "fedzip.down.checksum"
DOWN_KEY = "fedzip.down.key"
DOWN_MODEL = "fedzip.down.model"
DOWN_PAYLOADS = "fedzip.down.payloads"
DOWN_PASSTHROUGH = "fedzip.down.passthrough"
# The client's synchronised copy and its version, in the node's state.
STATE_MODEL = "fedzip.down.replica"
STATE_INFO = "fedzip.down.replica-info"
_CONFIG_KEYS = (DOWN_VERSION, DOWN_BASE, DOWN_CHECKSUM, DOWN_KEY)


class DownlinkError(ValueError):
    """The client's copy cannot be brought to the server's version."""


def checksum(arrays: dict[str, np.ndarray]) -> int:
    """CRC32 of names, dtypes, shapes and values: equal models, equal checksums."""
    crc = 0
    for name, array in arrays.items():
        header = f"{name}|{array.dtype.str}|{array.shape}".encode()
        crc = zlib.crc32(header, crc)
        crc = zlib.crc32(np.ascontiguousarray(array).data, crc)
    return crc


def apply(replica: dict[str, np.ndarray], payload: bytes) -> None:
    """Add what ``payload`` carries to ``replica`` (in place, in each tensor's dtype)."""
    limit = sum(a.size for a in replica.values())
    for name, delta in decode(payload, max_elements=limit, max_tensors=len(replica)).items():
        target = replica.get(name)
        if target is None or target.shape != delta.shape:
            raise DownlinkError(f"the download's tensor {name!r} does not match the model held")
        if target.dtype != delta.dtype:
            # the strategy changed the tensor's dtype (FedAvg averages integer buffers in float64,
            # FedAdam keeps a float64 model): hold it as the server now does
            target = replica[name] = target.astype(delta.dtype)
        target += delta


class Broadcaster:
    """The server's side: the replica, its versions and what each node holds."""

    def __init__(self, compressor: Compressor, history: int = 8, shared_start: bool = False) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"downlink_history must be an int >= 0, got {history!r}")
        self.compressor = compressor
        self.history = history
        self.replica: dict[str, np.ndarray] | None = None
        self.version = -1
        self.checksum = 0
        self._payloads: deque[bytes] = deque(maxlen=max(history, 1))
        # node id -> version it holds; None: unknown (it gets the model dense)
        self.nodes: dict[int, int | None] = {}
        # the version a node never heard from is taken to hold (clients build it themselves)
        self._assumed: int | None = 0 if shared_start else None

    def advance(self, model: dict[str, np.ndarray]) -> None:
        """Make the next version, as close to the exact ``model`` as the compressor allows."""
        if (
            self.replica is None
            or list(self.replica) != list(model)
            or any(self.replica[k].shape != v.shape for k, v in model.items())
        ):
            # first round, or another model: everyone starts from the exact model, dense
            # (a dtype the strategy changed is not another model: the payloads carry it)
            if self.replica is not None:
                self._assumed = None  # a model changed mid-run is not one clients can build
            self.replica = {k: np.array(v, copy=True) for k, v in model.items()}
            self._payloads.clear()
            self.nodes.clear()
        else:
            delta = {
                k: np.subtract(v, self.replica[k], dtype=v.dtype)
                for k, v in model.items()
                if protocol.is_compressible(v)
            }
            payload = self.compressor.encode(delta)
            apply(self.replica, payload)  # exactly what the clients will do
            for k, v in model.items():
                if not protocol.is_compressible(v):
                    self.replica[k] = np.array(v, copy=True)
            self._payloads.append(payload)
        self.version += 1
        self.checksum = checksum(self.replica)

    def content_for(self, node_id: int, weights_key: str) -> tuple[dict[str, Any], dict[str, ArrayRecord]]:
        """The config entries and records that bring ``node_id`` to the current version."""
        assert self.replica is not None
        held = self.nodes.get(node_id, self._assumed)
        missed = None if held is None else self.version - held
        available = len(self._payloads) if self.history else 0
        config: dict[str, Any] = {
            DOWN_VERSION: self.version,
            DOWN_CHECKSUM: self.checksum,
            DOWN_KEY: weights_key,
        }
        if missed is not None and 0 <= missed <= available:
            payloads = list(self._payloads)[len(self._payloads) - missed :] if missed else []
            config[DOWN_BASE] = held
            records = {
                DOWN_PAYLOADS: ArrayRecord({str(i): protocol.bytes_array(p) for i, p in enumerate(payloads)})
            }
            fixed = {k: v for k, v in self.replica.items() if not protocol.is_compressible(v)}
            if fixed:
                records[DOWN_PASSTHROUGH] = protocol.to_record(fixed)
        else:
            config[DOWN_BASE] = -1
            records = {DOWN_MODEL: protocol.to_record(self.replica)}
        return config, records

    def confirm(self, node_id: int, version: int) -> None:
        self.nodes[node_id] = version

    def forget(self, node_id: int) -> None:
        """The node's copy is unknown (it failed or did not answer): its next download is dense."""
        self.nodes[node_id] = None


def _download_config(content: RecordDict) -> tuple[str, ConfigRecord] | None:
    return next(((n, c) for n, c in content.config_records.items() if DOWN_VERSION in c), None)


def wants_start(content: RecordDict, state: RecordDict) -> bool:
    """Whether ``content`` is a download that applies to version 0 while ``state`` holds no copy."""
    found = _download_config(content)
    if found is None or STATE_INFO in state.config_records:
        return False
    base = found[1].get(DOWN_BASE)
    return isinstance(base, int) and not isinstance(base, bool) and base == 0


def hold_start(state: RecordDict, model: dict[str, np.ndarray]) -> None:
    """Store ``model`` as this node's copy of version 0 (the run's initial model, built locally)."""
    state[STATE_MODEL] = protocol.to_record(model)
    state[STATE_INFO] = ConfigRecord({"version": 0})


def receive(content: RecordDict, state: RecordDict) -> dict[str, np.ndarray] | None:
    """The client's side: bring the copy in ``state`` to the download's version.

    Returns the model (and stores it, with its version, in ``state``), None if
    the message carries no download, or raises :class:`DownlinkError` (after
    dropping the copy, so that the server's next download is dense).
    """
    found = _download_config(content)
    if found is None:
        return None
    config_name, config = found
    try:
        version, base = int(config[DOWN_VERSION]), int(config[DOWN_BASE])
        expected, key = int(config[DOWN_CHECKSUM]), str(config[DOWN_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise DownlinkError(f"the download's settings are incomplete ({exc})") from None
    rest = {k: v for k, v in config.items() if k not in _CONFIG_KEYS}
    del content[config_name]
    content[config_name] = ConfigRecord(rest)
    try:
        if DOWN_MODEL in content.array_records:
            model = protocol.from_record(content.array_records[DOWN_MODEL])
        else:
            info = state.config_records.get(STATE_INFO)
            if info is None or STATE_MODEL not in state.array_records:
                raise DownlinkError(
                    "this node holds no copy of the model (new or restarted; with a shared start, "
                    "list shared_start_mod before fedzip_mod)"
                )
            if int(info["version"]) != base:
                raise DownlinkError(
                    f"this node holds version {int(info['version'])}, the download applies to {base}"
                )
            model = protocol.from_record(state.array_records[STATE_MODEL])
            payloads = content.array_records.get(DOWN_PAYLOADS, ArrayRecord())
            numbers = {str(i) for i in range(len(payloads))}
            if set(payloads) != numbers:  # as a set: a wire need not keep the order
                raise DownlinkError(
                    f"the download's payloads are not numbered 0, 1, ...: {list(payloads)[:5]}"
                )
            for index in range(len(payloads)):
                apply(model, protocol.array_bytes(payloads[str(index)]))
            if DOWN_PASSTHROUGH in content.array_records:
                for k, v in protocol.from_record(content.array_records[DOWN_PASSTHROUGH]).items():
                    if k not in model or model[k].shape != v.shape:
                        raise DownlinkError(f"the download's tensor {k!r} does not match the model held")
                    model[k] = v
        if checksum(model) != expected:
            raise DownlinkError("the model after the download does not match the server's (checksum)")
    except (DownlinkError, ValueError, KeyError, TypeError) as exc:
        state.pop(STATE_MODEL, None)
        state.pop(STATE_INFO, None)
        raise DownlinkError(f"{exc}; the copy is dropped and the next download will be dense") from None
    finally:
        for record in (DOWN_MODEL, DOWN_PAYLOADS, DOWN_PASSTHROUGH):
            content.pop(record, None)
    state[STATE_MODEL] = protocol.to_record(model)
    state[STATE_INFO] = ConfigRecord({"version": version})
    content[key] = protocol.to_record(model)
    return model
