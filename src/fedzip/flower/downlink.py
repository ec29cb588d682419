"""Compressed downloads: the server sends what changed, every client holds the same model.

The server keeps two models: the exact global model (its strategy's) and the
*replica*, the copy every synchronised client holds. Each round it compresses
``global - replica`` with the downlink compressor and adds what the payload
carries to the replica. Whatever compression left out stays in that
difference and is sent in later rounds: server-side error feedback without a
separate residual. Clients train from the replica; the server applies their
updates to the exact model.

Versions: the replica after round r's broadcast is version r. A client that
holds an older version is brought to the current one by whichever of three
downloads is the smallest in bytes:

- the *chain*: the payloads it missed, in order (the server keeps payloads
  while together they are smaller than the model: an older chain could never
  be the smallest; ``history`` can also cap their number);
- a *patch*: the current value of every element that changed since its
  version, replacing the held one (exact, whatever the codec; the server keeps
  one int32 per element, the version it last changed in). Top-z downloads
  touch the same elements round after round, so after many missed rounds the
  patch is smaller than the chain;
- the replica itself, *dense* (also for a client whose version is unknown:
  new, restarted or failed).

Every download carries the replica's checksum: a client whose copy does not
match refuses to train (an error reply naming the cause), drops its copy, and
is sent the dense replica next time. No client ever trains on a model the
server does not hold.

Shared start: the dense first download is most of a short run's downlink bytes
(it caps a run's download ratio at its number of rounds). When every client
can build the initial model itself (the same code and seed, bit for bit),
``Broadcaster(shared_start=True)`` assumes a node it has not heard from holds
version 0, and :func:`shared_start_mod` builds that copy on the client. Round 1
then sends only the checksum; later newcomers are brought up from version 0
like any client that missed rounds. A client whose build differs fails the checksum
once and is sent the dense model, as above.

The server's side is here; the client's, :mod:`fedzip.flower.replica`.

Message layout (server -> client), added to the train message's ConfigRecord:

    DOWN_VERSION   int, the version the download brings the client to
    DOWN_BASE      int, the version the payloads apply to (-1: dense)
    DOWN_CHECKSUM  int, CRC32 of the replica at DOWN_VERSION
    DOWN_KEY       str, the ArrayRecord key the model goes back under

and, instead of the weights' ArrayRecord, either DOWN_MODEL (the dense
replica), DOWN_PAYLOADS ({"0": uint8, "1": uint8, ...}: the payloads in
order) or DOWN_PATCH ("v:<name>": the new values in the tensor's dtype, with
"i:<name>" their uint32 flat indices or "m:<name>" a packed bit mask of the
changed elements; a "v:" alone is the whole tensor). Integer and bool tensors
travel in the payloads exactly (:mod:`fedzip.exact`), and in patches as any other.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from .. import exact
from ..abc import Compressor
from ..payload import decode
from . import protocol

DOWN_VERSION = "fedzip.down.version"
DOWN_BASE = "fedzip.down.base"
DOWN_CHECKSUM = "fedzip.down.checksum"
DOWN_KEY = "fedzip.down.key"
DOWN_MODEL = "fedzip.down.model"
DOWN_PAYLOADS = "fedzip.down.payloads"
DOWN_PATCH = "fedzip.down.patch"
FORMS = ("chain", "patch", "dense")  # what a download can be
CONFIG_KEYS = (DOWN_VERSION, DOWN_BASE, DOWN_CHECKSUM, DOWN_KEY)


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
        if exact.is_exact(delta):  # an integer or bool tensor's exact difference
            replica[name] = exact.apply(target, delta)
            continue
        if target.dtype != delta.dtype:
            # the strategy changed the tensor's dtype (FedAvg averages integer buffers in float64,
            # FedAdam keeps a float64 model): hold it as the server now does
            target = replica[name] = target.astype(delta.dtype)
        target += delta


def _bits(array: np.ndarray) -> np.ndarray:
    """The elements' bit patterns (-0.0 and 0.0 differ, as they do in a checksum)."""
    return array.reshape(-1).view(np.dtype(f"u{array.dtype.itemsize}"))


def patch_entries(
    replica: dict[str, np.ndarray], changed: dict[str, np.ndarray], held: int
) -> tuple[dict[str, np.ndarray], int]:
    """The patch from version ``held`` to ``replica`` (DOWN_PATCH's arrays) and its size in bytes."""
    entries: dict[str, np.ndarray] = {}
    for name, last in changed.items():
        where = np.flatnonzero(last > held)
        if not where.size:
            continue
        values = replica[name].reshape(-1)
        index_bytes = min(4 * where.size, -(-values.size // 8))
        if (where.size * values.itemsize + index_bytes) >= values.nbytes:
            entries[f"v:{name}"] = values
            continue
        entries[f"v:{name}"] = values[where]
        if 4 * where.size <= index_bytes:
            entries[f"i:{name}"] = where.astype(np.uint32)
        else:
            mask = np.zeros(values.size, dtype=bool)
            mask[where] = True
            entries[f"m:{name}"] = np.packbits(mask)
    return entries, sum(a.nbytes + len(k) for k, a in entries.items())


class Broadcaster:
    """The server's side: the replica, its versions and what each node holds.

    ``history``: None (default) keeps payloads while together they are smaller than the model;
    an int also caps their number (0: no chains, a client that missed a round gets a patch or
    the dense model).
    """

    def __init__(
        self, compressor: Compressor, history: int | None = None, shared_start: bool = False
    ) -> None:
        if history is not None and (isinstance(history, bool) or not isinstance(history, int) or history < 0):
            raise ValueError(f"downlink_history must be None or an int >= 0, got {history!r}")
        self.compressor = compressor
        self.history = history
        self.replica: dict[str, np.ndarray] | None = None
        self.version = -1
        self.checksum = 0
        self._payloads: deque[bytes] = deque()
        # per tensor, the version each element last changed in (what a patch sends)
        self._changed: dict[str, np.ndarray] = {}
        self._patches: dict[int, tuple[dict[str, np.ndarray], int]] = {}  # this version's, by base
        # node id -> version it holds; None: unknown (it gets the model dense)
        self.nodes: dict[int, int | None] = {}
        # the version a node never heard from is taken to hold (clients build it themselves)
        self._assumed: int | None = 0 if shared_start else None

    def advance(self, model: dict[str, np.ndarray]) -> None:
        """Make the next version, as close to the exact ``model`` as the compressor allows."""
        self.version += 1
        self._patches.clear()
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
            self._changed = {
                k: np.full(v.size, self.version, dtype=np.int32) for k, v in self.replica.items()
            }
        else:
            delta = {
                k: exact.difference(v, self.replica[k])
                if exact.is_exact(v)
                else np.subtract(v, self.replica[k], dtype=v.dtype)
                for k, v in model.items()
            }
            payload = self.compressor.encode(delta)
            before = {k: self.replica[k].copy() for k in delta}
            apply(self.replica, payload)  # exactly what the clients will do
            for k, old in before.items():
                new = self.replica[k]
                if new.dtype != old.dtype or k not in self._changed:  # e.g. FedAvg's float64 buffers
                    self._changed[k] = np.full(new.size, self.version, dtype=np.int32)
                else:
                    self._changed[k][_bits(new) != _bits(old)] = self.version
            self._payloads.append(payload)
            self._trim()
        self.checksum = checksum(self.replica)

    def _trim(self) -> None:
        """Drop the payloads no chain can use: past ``history``, or more bytes than the model."""
        dense = self.dense_bytes()
        total = sum(map(len, self._payloads))
        while self._payloads and (
            total > dense or (self.history is not None and len(self._payloads) > self.history)
        ):
            total -= len(self._payloads.popleft())

    def dense_bytes(self) -> int:
        assert self.replica is not None
        return sum(v.nbytes for v in self.replica.values())

    def content_for(self, node_id: int, weights_key: str) -> tuple[dict[str, Any], dict[str, ArrayRecord]]:
        """The config entries and records that bring ``node_id`` to the current version: the
        smallest of the chain of missed payloads, a patch and the dense model."""
        _, config, records = self._download(node_id, weights_key)
        return config, records

    def _download(self, node_id: int, weights_key: str) -> tuple[str, dict[str, Any], dict[str, ArrayRecord]]:
        """(form, config entries, records) of ``node_id``'s download; the form is one of FORMS."""
        assert self.replica is not None
        held = self.nodes.get(node_id, self._assumed)
        missed = None if held is None else self.version - held
        config: dict[str, Any] = {
            DOWN_VERSION: self.version,
            DOWN_CHECKSUM: self.checksum,
            DOWN_KEY: weights_key,
            DOWN_BASE: -1,
        }
        dense = "dense", config, {DOWN_MODEL: protocol.to_record(self.replica)}
        if missed is None or missed < 0:
            return dense
        chain = list(self._payloads)[len(self._payloads) - missed :] if missed else []
        chain_bytes = sum(map(len, chain)) if missed <= len(self._payloads) else None
        if held not in self._patches:  # nodes at the same version share one patch
            self._patches[held] = patch_entries(self.replica, self._changed, held)
        patch, patch_bytes = self._patches[held]
        sizes = {"chain": chain_bytes, "patch": patch_bytes, "dense": self.dense_bytes()}
        form = min((size, FORMS.index(f), f) for f, size in sizes.items() if size is not None)[2]
        if form == "dense":
            return dense
        config[DOWN_BASE] = held
        records = (
            {DOWN_PAYLOADS: _numbered(chain)} if form == "chain" else {DOWN_PATCH: protocol.to_record(patch)}
        )
        return form, config, records

    def prepare(self, message: Message, weights_key: str) -> str:
        """Give ``message`` its own content: the download that brings its node to the current version.
        Returns its form: "dense", "patch", "chain" (payloads of missed rounds too) or "" (this round's)."""
        form, config, records = self._download(message.metadata.dst_node_id, weights_key)
        content = RecordDict({k: v for k, v in message.content.items() if k != weights_key})
        name = next(n for n, c in content.config_records.items() if protocol.CODEC_KEY in c)
        content[name] = ConfigRecord({**content.config_records[name], **config})
        for key, record in records.items():
            content[key] = record
        message.content = content
        return "" if form == "chain" and len(records[DOWN_PAYLOADS]) <= 1 else form

    def confirm(self, node_id: int, version: int) -> None:
        self.nodes[node_id] = version

    def forget(self, node_id: int) -> None:
        """The node's copy is unknown (it failed or did not answer): its next download is dense."""
        self.nodes[node_id] = None


def _numbered(payloads: list[bytes]) -> ArrayRecord:
    return ArrayRecord({str(i): protocol.bytes_array(p) for i, p in enumerate(payloads)})
