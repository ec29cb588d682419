"""What the strategy and the mod agree on: record names and their contents."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

# ConfigRecord the strategy adds to train messages: {"codec": JSON, "error-feedback": bool}
SETTINGS = "fedzip.settings"
# ConfigRecord that replaces the reply's ArrayRecord:
#   {"payload": bytes, "array-record": name of the replaced ArrayRecord}
PAYLOAD = "fedzip.payload"
# ArrayRecord in the reply for arrays the codec does not take (non-float buffers), sent as they are.
PASSTHROUGH = "fedzip.passthrough"
# ArrayRecord in the node's state holding the error-feedback residual.
RESIDUAL = "fedzip.residual"


def is_compressible(array: np.ndarray) -> bool:
    return array.dtype in (np.float16, np.float32, np.float64)


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}
