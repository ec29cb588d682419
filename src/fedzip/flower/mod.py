"""Client side: replace the trained weights in a reply by a compressed update."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from .. import exact
from ..feedback import ErrorFeedback
from ..payload import decode
from ..registry import get_compressor
from . import downlink, protocol, replica

# Flower mods that rewrite the reply's weights: they must run inside fedzip_mod
# (after it in ``mods=[...]``) so that they see weights, not a payload.
_ARRAY_MODS = {
    fixedclipping_mod.__code__: "fixedclipping_mod",
    adaptiveclipping_mod.__code__: "adaptiveclipping_mod",
    LocalDpMod.__call__.__code__: "LocalDpMod",
}


def _error(msg: Message, reason: str, code: int = ErrorCode.MOD_FAILED_PRECONDITION) -> Message:
    """An error reply; MOD_FAILED_PRECONDITION tells the server a setting is wrong, UNKNOWN a transient fault."""
    log(WARNING, "fedzip_mod: %s", reason)
    return Message(Error(code=code, reason=f"fedzip_mod: {reason}"), reply_to=msg)


def _array_mods_outside() -> list[str]:
    """Names of the weight-rewriting Flower mods that called this mod, outermost last."""
    found = []
    frame = sys._getframe(2)
    while frame is not None:
        name = _ARRAY_MODS.get(frame.f_code)
        if name is not None:
            found.append(name)
        frame = frame.f_back
    return found


def _fits(state: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> bool:
    """Whether error-feedback state (of float tensors only) has the layout of ``arrays``' float
    tensors; no state fits anything."""
    if not state:
        return True
    floats = exact.floats(arrays)
    return list(state) == list(floats) and all(
        state[k].shape == v.shape and state[k].dtype == v.dtype for k, v in floats.items()
    )


def _load(sender: ErrorFeedback, context: Context, model: dict[str, np.ndarray]) -> None:
    """The node's residual, velocity (with momentum) and the residual's round into ``sender``, if they
    fit ``model``."""
    records = context.state.array_records
    keys = (protocol.RESIDUAL, protocol.VELOCITY) if sender.momentum else (protocol.RESIDUAL,)
    stored = {key: protocol.from_record(records[key]) if key in records else {} for key in keys}
    if not all(_fits(state, model) for state in stored.values()):
        log(WARNING, "fedzip_mod: the model changed since the last round; error-feedback state reset")
        stored = {}
    sender.residual = stored.get(protocol.RESIDUAL, {})
    sender.velocity = stored.get(protocol.VELOCITY, {})
    made = context.state.get(protocol.RESIDUAL_ROUND)
    sender.made = int(made["round"]) if made is not None and sender.residual else None


def _subtract_estimate(update: dict[str, np.ndarray], payload: bytes) -> None:
    """``update -= estimate`` (in place) for the tensors the estimate holds; ValueError if it does not fit."""
    limit = sum(a.size for a in update.values())
    for name, value in decode(payload, max_elements=limit, max_tensors=len(update), layout=update).items():
        if name not in update or update[name].shape != value.shape:
            raise ValueError(f"the server's estimate of {name!r} does not match the update")
        if not exact.is_exact(update[name]):  # the server estimates the float tensors alone
            update[name] = np.subtract(update[name], value, dtype=update[name].dtype)


def fedzip_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Upload ``trained - received`` as one compressed payload.

    Acts on train messages that carry the settings of a
    :class:`~fedzip.flower.FedZipStrategy`; everything else passes through.
    Put it first in ``ClientApp(mods=[fedzip_mod, ...])``: mods after it
    (clipping, local DP) then work on weights as usual, and fedzip compresses
    what they produce. With error feedback, the residual lives in
    ``context.state`` between rounds.
    """
    try:
        settings = protocol.pop_settings(msg.content)
    except ValueError as exc:
        return _error(msg, f"invalid feedback settings from the server ({exc}); is fedzip the same version?")
    if settings is None:
        return call_next(msg, context)
    codec_json, error_feedback, feedback_options, server_round = settings
    outside = _array_mods_outside()
    if outside:
        return _error(
            msg,
            f"{outside[0]} is listed before fedzip_mod in the ClientApp's mods, so it would see the "
            f"compressed payload instead of weights; list fedzip_mod first: "
            f"mods=[fedzip_mod, {outside[0]}]",
        )
    try:
        compressor = get_compressor(json.loads(codec_json))
        sender = ErrorFeedback(compressor, **feedback_options) if error_feedback else None
    except (ValueError, TypeError) as exc:
        return _error(msg, f"invalid codec settings from the server ({exc}); is fedzip the same version?")
    try:
        replica.receive(msg.content, context.state)
    except downlink.DownlinkError as exc:
        # transient: the server sends the whole model next time
        return _error(msg, f"could not apply the compressed download: {exc}", ErrorCode.UNKNOWN)
    estimate = msg.content.pop(protocol.ESTIMATE, None)  # server_memory="ef21": upload update - estimate
    if len(msg.content.array_records) != 1:
        return _error(
            msg, f"expects one ArrayRecord in the train message, found {len(msg.content.array_records)}"
        )
    model_key, model_record = next(iter(msg.content.array_records.items()))
    received = protocol.from_record(model_record)
    shift: dict[str, np.ndarray] = {}
    if sender is not None:
        _load(sender, context, received)
        # step-ahead error feedback: train from the model plus part of the residual
        shift = sender.preview(server_round)
        if shift:
            msg.content[model_key] = protocol.to_record(
                {k: np.add(v, shift[k], dtype=v.dtype) if k in shift else v for k, v in received.items()}
            )

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1:
        return _error(
            msg,
            f"the ClientApp's reply must hold one ArrayRecord of trained weights, "
            f"found {len(reply.content.array_records)}",
        )
    key, trained_record = next(iter(reply.content.array_records.items()))
    trained = protocol.from_record(trained_record)
    if list(trained) != list(received) or any(trained[k].shape != received[k].shape for k in trained):
        return _error(msg, "the reply's arrays do not match the arrays received (names or shapes differ)")

    update = {}
    for name, array in trained.items():
        if exact.is_exact(array):  # sent exactly, in the same payload
            update[name] = exact.difference(array, received[name])
        elif protocol.is_compressible(array):
            # in the dtype the client trained in (what it would have sent), in the
            # memory of the decoded reply, which nothing else holds
            out = array if array.flags.writeable and array.flags.c_contiguous else None
            update[name] = np.subtract(array, received[name], out=out, dtype=array.dtype, casting="unsafe")
            if name in shift:  # from where it trained
                np.subtract(update[name], shift[name], out=update[name], casting="unsafe")
        else:
            return _error(
                msg,
                f"the reply's tensor {name!r} is {array.dtype}: fedzip sends float tensors compressed "
                f"and integer and bool ones exactly, nothing else",
            )
    try:
        if estimate is not None:
            _subtract_estimate(update, protocol.payload_bytes(estimate))
        if sender is not None:
            if not (_fits(sender.residual, update) and _fits(sender.velocity, update)):
                log(WARNING, "fedzip_mod: the update's layout differs from the model's; feedback state reset")
                sender.reset()
            payload = sender.encode(update, server_round)
            if sender.made is not None:
                context.state[protocol.RESIDUAL_ROUND] = ConfigRecord({"round": sender.made})
            else:
                context.state.pop(protocol.RESIDUAL_ROUND, None)
        else:
            payload = compressor.encode(update)
        # what error feedback keeps between rounds; nothing of it without feedback or momentum
        for state_key, kept in (
            (protocol.RESIDUAL, sender.residual if sender else {}),
            (protocol.VELOCITY, sender.velocity if sender else {}),
        ):
            if kept:
                context.state[state_key] = protocol.to_record(kept)
            else:
                context.state.pop(state_key, None)
    except ValueError as exc:  # FormatError included: a bad estimate
        return _error(msg, f"could not encode the update: {exc}")

    del reply.content[key]
    reply.content[protocol.PAYLOAD] = protocol.payload_record(payload)
    return reply


def shared_start_mod(build: Callable[[Message, Context], ArrayRecord | Mapping[str, Any]]) -> Mod:
    """A mod that builds the initial model on the client, for ``FedZipStrategy(downlink_shared_start=True)``.

    ``build(msg, context)`` returns the run's initial model (an ArrayRecord, a
    dict of numpy arrays or a torch state_dict), bit for bit the one the
    server starts from: same code, same seed. The mod calls it only when a
    compressed download applies to version 0 and the node holds no copy, and
    stores the result as that copy; the download's checksum then decides
    whether it was right. List it before :func:`fedzip_mod`.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if replica.wants_start(msg.content, context.state):
            try:
                built = build(msg, context)
                if isinstance(built, Mapping) and all(isinstance(v, np.ndarray) for v in built.values()):
                    model = dict(built)
                else:  # an ArrayRecord, or what Flower turns into one (a torch state_dict)
                    model = protocol.from_record(
                        built if isinstance(built, ArrayRecord) else ArrayRecord(built)
                    )
                replica.hold_start(context.state, model)
            except Exception as exc:  # the user's code: report it, never crash the node
                return _error(msg, f"shared_start_mod: building the initial model failed ({exc!r})")
        return call_next(msg, context)

    return mod
