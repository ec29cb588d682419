"""The client's side of compressed downloads (:mod:`fedzip.flower.downlink`): its copy of the model.

The copy and its version live in the node's state; a download brings them to
the server's version (payloads, a patch or the dense model) and is checked
against the server's checksum, or the copy is dropped.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from . import protocol
from .downlink import (
    CONFIG_KEYS,
    DOWN_BASE,
    DOWN_CHECKSUM,
    DOWN_KEY,
    DOWN_MODEL,
    DOWN_PATCH,
    DOWN_PAYLOADS,
    DOWN_VERSION,
    DownlinkError,
    apply,
    checksum,
)

# The client's synchronised copy and its version, in the node's state.
STATE_MODEL = "fedzip.down.replica"
STATE_INFO = "fedzip.down.replica-info"


def apply_patch(model: dict[str, np.ndarray], patch: dict[str, np.ndarray]) -> None:
    """Replace the elements a patch carries (in place); DownlinkError when it does not fit ``model``."""
    for key in patch:
        kind, _, name = key.partition(":")
        if kind not in ("v", "i", "m") or name not in model or (kind != "v" and f"v:{name}" not in patch):
            raise DownlinkError(f"the download's patch entry {key!r} does not match the model held")
    for key, values in patch.items():
        if not key.startswith("v:"):
            continue
        name = key[2:]
        target = model[name] = model[name].astype(values.dtype)  # the server's dtype, in a copy
        flat = target.reshape(-1)
        indices, mask = patch.get(f"i:{name}"), patch.get(f"m:{name}")
        if indices is not None:
            ok = indices.dtype == np.uint32 and indices.shape == values.shape
            if not ok or (indices.size and int(indices.max()) >= flat.size):
                raise DownlinkError(f"the download's patch of {name!r} has bad indices")
            flat[indices] = values
        elif mask is not None:
            if mask.dtype != np.uint8 or mask.shape != (-(-flat.size // 8),):
                raise DownlinkError(f"the download's patch of {name!r} has a bad mask")
            chosen = np.unpackbits(mask, count=flat.size).astype(bool)
            if int(chosen.sum()) != values.size:
                raise DownlinkError(f"the download's patch of {name!r} has a bad mask")
            flat[chosen] = values
        elif values.shape == (flat.size,):
            flat[:] = values
        else:
            raise DownlinkError(f"the download's patch of {name!r} has {values.size} values for {flat.size}")


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
    rest = {k: v for k, v in config.items() if k not in CONFIG_KEYS}
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
            if DOWN_PATCH in content.array_records:
                apply_patch(model, protocol.from_record(content.array_records[DOWN_PATCH]))
            payloads = content.array_records.get(DOWN_PAYLOADS, ArrayRecord())
            numbers = {str(i) for i in range(len(payloads))}
            if set(payloads) != numbers:  # as a set: a wire need not keep the order
                raise DownlinkError(
                    f"the download's payloads are not numbered 0, 1, ...: {list(payloads)[:5]}"
                )
            for index in range(len(payloads)):
                apply(model, protocol.array_bytes(payloads[str(index)]))
        if checksum(model) != expected:
            raise DownlinkError("the model after the download does not match the server's (checksum)")
    except (DownlinkError, ValueError, KeyError, TypeError) as exc:
        state.pop(STATE_MODEL, None)
        state.pop(STATE_INFO, None)
        raise DownlinkError(f"{exc}; the copy is dropped and the next download will be dense") from None
    finally:
        for record in (DOWN_MODEL, DOWN_PAYLOADS, DOWN_PATCH):
            content.pop(record, None)
    state[STATE_MODEL] = protocol.to_record(model)
    state[STATE_INFO] = ConfigRecord({"version": version})
    content[key] = protocol.to_record(model)
    return model
