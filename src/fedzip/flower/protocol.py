"""What the strategy and the mod agree on: where settings and payloads travel.

Train message (server -> client): the inner strategy's message, unchanged but
for two keys added to its ConfigRecord (the one record Flower's DP mods expect):

    CODEC_KEY     JSON config of the compressor (``get_config()``) for this round
    FEEDBACK_KEY  bool, whether the client keeps an error-feedback residual
    FEEDBACK_OPTIONS_KEY  JSON of ErrorFeedback's options (momentum, masking,
                  clip_norm); absent when they are the defaults

and, with ``FedZipStrategy(server_memory="ef21")``, for a client the server
holds an estimate of:

    ESTIMATE      ArrayRecord {"payload": a payload's Array, as PAYLOAD}: the client's previous
                  update as the server holds it, compressed; the client uploads
                  its update minus this estimate

Train reply (client -> server): the ClientApp's reply with its one ArrayRecord
of trained weights replaced by

    PAYLOAD       ArrayRecord {"payload": Array of the payload's bytes as they are,
                  stype "fedzip", dtype uint8, shape (bytes,)}: ``trained - received``
                  of every tensor, the float ones compressed, the integer and bool
                  ones (BatchNorm's ``num_batches_tracked``) exact (fedzip.exact).
                  An Array, not a ConfigRecord value, so Flower streams it in
                  chunks like weights.

The server puts the rebuilt weights back under the key of the ArrayRecord it
sent; the client has no say in it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

CODEC_KEY = "fedzip.codec"
FEEDBACK_KEY = "fedzip.error-feedback"
FEEDBACK_OPTIONS_KEY = "fedzip.feedback-options"
PAYLOAD = "fedzip.payload"
PAYLOAD_ENTRY = "payload"
PAYLOAD_STYPE = "fedzip"  # an Array whose data is a payload's bytes as they are
ESTIMATE = "fedzip.estimate"
# ArrayRecords in the node's state holding the error-feedback residual and velocity.
RESIDUAL = "fedzip.residual"
VELOCITY = "fedzip.velocity"
ROUND_KEY = "fedzip.round"  # the server's round, so that a residual knows its age
RESIDUAL_ROUND = "fedzip.residual-round"  # in a client's state: the round its residual was made in
_KEYS = (CODEC_KEY, FEEDBACK_KEY, FEEDBACK_OPTIONS_KEY, ROUND_KEY)
# ConfigRecord name used when the inner strategy's train message has none.
DEFAULT_CONFIG = "config"


def is_compressible(array: np.ndarray) -> bool:
    return array.dtype in (np.float16, np.float32, np.float64)


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of exactly these arrays: shapes (0-d included) and dtypes kept."""
    return ArrayRecord({name: Array(np.asarray(value, order="C")) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


class Settings(NamedTuple):
    codec_json: str
    error_feedback: bool
    feedback_options: dict[str, Any]
    server_round: int | None = None


def add_settings(
    content: RecordDict,
    codec: dict[str, Any],
    error_feedback: bool,
    feedback_options: dict[str, Any] | None = None,
    server_round: int | None = None,
) -> None:
    """Put the settings in the message's ConfigRecord (a new one if it has none)."""
    names = list(content.config_records)
    name = names[0] if names else DEFAULT_CONFIG
    config = dict(content.config_records[name]) if names else {}
    config[CODEC_KEY] = json.dumps(codec, sort_keys=True)
    config[FEEDBACK_KEY] = bool(error_feedback)
    if feedback_options:
        config[FEEDBACK_OPTIONS_KEY] = json.dumps(feedback_options, sort_keys=True)
    if server_round is not None:
        config[ROUND_KEY] = int(server_round)
    # A copy: the inner strategy may hand the same ConfigRecord to other messages.
    content[name] = ConfigRecord(config)


def pop_settings(content: RecordDict) -> Settings | None:
    """Take the settings out of the message, or None if it carries none.

    ValueError if the feedback options are not a JSON object.
    """
    for name, config in content.config_records.items():
        if CODEC_KEY in config:
            rest = {k: v for k, v in config.items() if k not in _KEYS}
            # a new record, not an edit: the received one may be shared
            del content[name]
            if rest or name != DEFAULT_CONFIG or content.config_records:
                content[name] = ConfigRecord(rest)
            options = json.loads(str(config.get(FEEDBACK_OPTIONS_KEY, "{}")))
            if not isinstance(options, dict):
                raise ValueError(f"{FEEDBACK_OPTIONS_KEY} must be a JSON object, got {options!r}")
            server_round = config.get(ROUND_KEY)
            if server_round is not None and (
                isinstance(server_round, bool) or not isinstance(server_round, int)
            ):
                raise ValueError(f"{ROUND_KEY} must be an integer, got {server_round!r}")
            return Settings(
                str(config[CODEC_KEY]), bool(config.get(FEEDBACK_KEY, False)), options, server_round
            )
    return None


def bytes_array(payload: bytes) -> Array:
    """A payload as an Array of its bytes as they are (stype PAYLOAD_STYPE, dtype uint8, shape
    (bytes,)): Flower streams Arrays in chunks; a numpy Array would add a 128-byte .npy header."""
    return Array(dtype="uint8", shape=(len(payload),), stype=PAYLOAD_STYPE, data=bytes(payload))


def payload_record(payload: bytes) -> ArrayRecord:
    return ArrayRecord({PAYLOAD_ENTRY: bytes_array(payload)})


def array_bytes(array: Array) -> bytes:
    """The bytes of an Array made by :func:`bytes_array`; ValueError for anything else."""
    if not isinstance(array, Array) or (array.stype, array.dtype) != (PAYLOAD_STYPE, "uint8"):
        kind = (array.stype, array.dtype) if isinstance(array, Array) else type(array).__name__
        raise ValueError(f"a payload is an Array of stype {PAYLOAD_STYPE!r} and dtype uint8, got {kind}")
    data = bytes(array.data)
    if tuple(array.shape) != (len(data),):
        raise ValueError(f"a payload Array of shape {tuple(array.shape)} holds {len(data)} bytes")
    return data


def payload_bytes(record: ArrayRecord) -> bytes:
    """The payload carried by a PAYLOAD record; ValueError if the record is not one."""
    if list(record) != [PAYLOAD_ENTRY]:
        raise ValueError(f"the {PAYLOAD!r} record must hold one entry {PAYLOAD_ENTRY!r}, got {list(record)}")
    return array_bytes(record[PAYLOAD_ENTRY])
