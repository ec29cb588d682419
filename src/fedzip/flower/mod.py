"""Client side: replace the trained weights in a reply by a compressed update."""

from __future__ import annotations

import json
from logging import WARNING

from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from ..feedback import ErrorFeedback
from ..registry import get_compressor
from . import protocol


def _error(msg: Message, reason: str) -> Message:
    log(WARNING, "fedzip_mod: %s", reason)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"fedzip_mod: {reason}"), reply_to=msg
    )


def fedzip_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Upload ``trained - received`` as one compressed payload.

    Acts on train messages that carry the settings of a
    :class:`~fedzip.flower.FedZipStrategy`; everything else passes through.
    The reply's ArrayRecord is replaced by a ConfigRecord holding the payload.
    With error feedback, the residual lives in ``context.state`` between rounds.
    """
    if msg.metadata.message_type != MessageType.TRAIN or protocol.SETTINGS not in msg.content.config_records:
        return call_next(msg, context)
    settings = msg.content.config_records[protocol.SETTINGS]
    del msg.content[protocol.SETTINGS]  # the ClientApp sees the message the inner strategy built
    try:
        compressor = get_compressor(json.loads(str(settings["codec"])))
    except (KeyError, ValueError, TypeError) as exc:
        return _error(msg, f"invalid codec settings from the server: {exc}")
    if len(msg.content.array_records) != 1:
        return _error(
            msg, f"expects one ArrayRecord in the train message, found {len(msg.content.array_records)}"
        )
    received = protocol.from_record(next(iter(msg.content.array_records.values())))

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1:
        return _error(msg, f"expects one ArrayRecord in the reply, found {len(reply.content.array_records)}")
    key, trained_record = next(iter(reply.content.array_records.items()))
    trained = protocol.from_record(trained_record)
    if list(trained) != list(received) or any(trained[k].shape != received[k].shape for k in trained):
        return _error(msg, "the reply's arrays do not match the arrays received (names or shapes differ)")

    update, passthrough = {}, {}
    for name, array in trained.items():
        if protocol.is_compressible(array):
            update[name] = array - received[name]
        else:
            passthrough[name] = array
    try:
        if settings.get("error-feedback", False):
            sender = ErrorFeedback(compressor)
            if protocol.RESIDUAL in context.state.array_records:
                sender.residual = protocol.from_record(context.state.array_records[protocol.RESIDUAL])
            payload = sender.encode(update)
            context.state[protocol.RESIDUAL] = protocol.to_record(sender.residual)
        else:
            payload = compressor.encode(update)
    except ValueError as exc:
        return _error(msg, f"could not encode the update: {exc}")

    del reply.content[key]
    reply.content[protocol.PAYLOAD] = ConfigRecord({"payload": payload, "array-record": key})
    if passthrough:
        reply.content[protocol.PASSTHROUGH] = protocol.to_record(passthrough)
    return reply
