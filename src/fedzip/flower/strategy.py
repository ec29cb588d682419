"""Server side: a strategy wrapper that decodes compressed replies."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from ..abc import Compressor
from ..codec import FedZip
from ..feedback import ErrorFeedback
from ..registry import get_compressor
from ..schedule import KeepWarmup
from . import protocol
from .accounting import RoundStats, content_bytes, reply_nodes
from .downlink import Broadcaster
from .memory import UpdateMemory, check_memory
from .options import check_client_dp, feedback_settings
from .replies import (
    NormGuard,
    Rejected,
    as_model,
    check_metrics,
    consistent,
    restore,
    weighting_key,
)
from .wrapper import StrategyWrapper

_DP_WRAPPERS = (DifferentialPrivacyFixedClippingBase, DifferentialPrivacyAdaptiveBase)


class ConfigurationError(RuntimeError):
    """Every reply of a round was unusable for a reason only a setting can fix.

    Raised out of ``aggregate_train`` (so the run stops) with a message that
    says what to change; transient failures never raise it.
    """


class FedZipStrategy(StrategyWrapper):
    """Wraps a Flower strategy so that client uploads travel compressed.

    Train messages carry the compressor's configuration to
    :func:`~fedzip.flower.fedzip_mod` inside their ConfigRecord. Each reply is
    checked (record layout, codec, tensor names, shapes and dtypes against the
    global model, finite values), its payload decoded into the weights the
    client trained (in the client's dtypes) and handed to the inner strategy
    under the ArrayRecord key the inner strategy sent. A reply that fails is
    logged, counted in :attr:`history` and passed to the inner strategy as an
    error reply, so its failure count includes it.

    Args:
        strategy: the strategy to wrap (default ``FedAvg()``). Wrap Flower's DP
            wrappers, never the reverse: ``FedZipStrategy(DifferentialPrivacy...(FedAvg()))``.
        compressor: a :class:`~fedzip.Compressor`, its config dict or its id.
        error_feedback: clients keep what compression dropped and add it to the
            next update; ``None`` (default) turns it on for compressors that
            need it (STC) and off otherwise.
        min_accepted: a round with fewer accepted replies leaves the model
            unchanged (the inner strategy is not asked to aggregate).
        norm_bound: a reply whose update norm exceeds this many times the median
            update norm of the round is rejected (the median of the last round
            with three or more replies when this one has fewer); ``None`` turns
            the check off. The change of integer and bool tensors (BatchNorm's
            counters) is held apart to this many times its own median.
        max_update_norm: an absolute bound on every reply's update norm (of its
            float tensors).
        on_payload: called as ``on_payload(round, payload)`` for every accepted payload
            (keyed ones decode with ``layout=`` the global model).
        warmup: a :class:`~fedzip.schedule.KeepWarmup`: clients keep more in
            the first rounds (the compressor's keep, or byte budget, scaled up).
        momentum: with error feedback, DGC's momentum correction on the
            clients (see :class:`~fedzip.ErrorFeedback`); 0 turns it off.
        masking: with momentum, DGC's factor masking.
        clip_norm: with error feedback, clients clip each update to this norm
            before accumulating it.
        age_decay, max_age: with error feedback, a client's residual that
            waited ``age`` rounds for the client's next turn is scaled by
            ``age_decay ** (age - 1)``, or dropped past ``max_age`` rounds
            (clients learn the round from the train message); ``step_ahead``:
            clients train from the model plus that fraction of their residual.
        downlink: compress downloads too: a compressor (or its config or id)
            for the change of the global model; clients keep a synchronised
            copy in their node state (:mod:`fedzip.flower.downlink`). None
            (default): the global model travels as it is.
        downlink_history: None (default): a client that missed rounds gets the
            smallest of the payloads it missed, a patch of the elements that
            changed and the dense model (payloads are kept while together
            smaller than the model); an int also caps the payloads kept.
        downlink_shared_start: clients build the initial model themselves
            (:func:`~fedzip.flower.shared_start_mod`), so the first download
            is its checksum instead of the dense model.
        server_memory: ``"fedvarp"``, ``"mifa"`` or ``"ef21"``: the server
            remembers every client's latest payload and corrects each round's
            replies with them (:mod:`fedzip.flower.memory`), for sampled
            clients that keep no state. None (default): off.
        keyed_uploads: FedZip uploads leave out what the server knows
            (``known_layout=True``: no tensor names, dtypes or shapes, no
            records of tensors that carry nothing, bfloat16 centroids); at
            1000x a small model's named payload may not even fit its budget.
            False sends them as the compressor is configured.

    Raises :class:`ConfigurationError` out of a round in which every reply was
    unusable because of a setting (no payload: fedzip_mod missing; another
    codec; names or shapes that do not match the model; a client mod that
    refused the message). Attribute reads and writes the wrapper does not
    define go to the inner strategy (``strategy.fraction_train``).
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        compressor: Compressor | Mapping[str, Any] | str | None = None,
        error_feedback: bool | None = None,
        *,
        min_accepted: int = 1,
        norm_bound: float | None = 10.0,
        max_update_norm: float | None = None,
        on_payload: Callable[[int, bytes], None] | None = None,
        warmup: KeepWarmup | None = None,
        momentum: float = 0.0,
        masking: bool = True,
        clip_norm: float | None = None,
        age_decay: float = 1.0,
        max_age: int | None = None,
        step_ahead: float = 0.0,
        downlink: Compressor | Mapping[str, Any] | str | None = None,
        downlink_history: int | None = None,
        downlink_shared_start: bool = False,
        server_memory: str | None = None,
        keyed_uploads: bool = True,
    ) -> None:
        super().__init__()
        inner = self._check_inner(strategy if strategy is not None else FedAvg())
        if compressor is None:
            compressor = FedZip()
        codec = compressor if isinstance(compressor, Compressor) else get_compressor(compressor)
        if not isinstance(keyed_uploads, bool):
            raise ValueError(f"keyed_uploads must be True or False, got {keyed_uploads!r}")
        if keyed_uploads and isinstance(codec, FedZip) and not codec.known_layout:
            codec = get_compressor({**codec.get_config(), "known_layout": True})
        feedback = codec.needs_error_feedback if error_feedback is None else bool(error_feedback)
        if isinstance(min_accepted, bool) or not isinstance(min_accepted, int) or min_accepted < 1:
            raise ValueError(f"min_accepted must be an int >= 1, got {min_accepted!r}")
        for option, value in (("norm_bound", norm_bound), ("max_update_norm", max_update_norm)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ValueError(f"{option} must be a positive number or None, got {value!r}")
        check_client_dp(inner, codec, feedback)
        feedback_options = feedback_settings(
            feedback, momentum, masking, clip_norm, age_decay, max_age, step_ahead
        )
        ErrorFeedback(codec, **feedback_options)  # checks the options here, not on every client
        if warmup is not None:
            if not isinstance(warmup, KeepWarmup):
                raise ValueError(f"warmup must be a fedzip.schedule.KeepWarmup, got {type(warmup).__name__}")
            get_compressor(warmup.config(1, codec.get_config()))  # a compressor it cannot scale fails now
        self.warmup = warmup
        self.feedback_options = feedback_options
        self.broadcaster = None
        if downlink is not None:
            down = downlink if isinstance(downlink, Compressor) else get_compressor(downlink)
            if getattr(down, "known_layout", False):
                raise ValueError(
                    "known_layout is for uploads: a download can change a tensor's dtype (FedAvg averages "
                    "integer buffers in float64) and carries its own names; drop it from downlink"
                )
            self.broadcaster = Broadcaster(down, downlink_history, bool(downlink_shared_start))
        elif downlink_shared_start:
            raise ValueError("downlink_shared_start needs a downlink compressor (downlink=...)")
        check_memory(server_memory, feedback)
        self.memory = UpdateMemory(server_memory) if server_memory is not None else None
        self._sent: dict[int, int] = {}  # node -> replica version sent this round
        self._messages: dict[int, Message] = {}  # node -> its train message this round
        self._pending: RoundStats | None = None  # this round's, from its train messages
        self._turns: dict[int, int] = {}  # node -> the last round it was asked to train
        self.compressor = codec
        self.error_feedback = feedback
        self.min_accepted = min_accepted
        self._norms = NormGuard(norm_bound, max_update_norm)
        self.on_payload = on_payload
        self.history: list[RoundStats] = []
        self._current: ArrayRecord | None = None
        self._weights_key: str | None = None
        self.strategy = inner  # last: from here on, unknown attributes go to it

    def __repr__(self) -> str:
        return f"FedZipStrategy({self.strategy!r}, {self.compressor!r}, error_feedback={self.error_feedback})"

    @property
    def norm_bound(self) -> float | None:
        """Replies whose update norm exceeds this many times the round's median are rejected."""
        return self._norms.bound

    @norm_bound.setter
    def norm_bound(self, value: float | None) -> None:
        self._norms.bound = value

    @property
    def max_update_norm(self) -> float | None:
        """An absolute bound on every reply's update norm."""
        return self._norms.limit

    @max_update_norm.setter
    def max_update_norm(self, value: float | None) -> None:
        self._norms.limit = value

    def summary(self) -> None:
        log(INFO, "\t├──> fedzip: %r, error feedback %s", self.compressor, self.error_feedback)
        self.strategy.summary()

    def _refuse_outer_dp_wrapper(self) -> None:
        """Flower's DP wrappers clip the replies they see: outside this wrapper they'd see payloads."""
        frame = sys._getframe(2)
        while frame is not None:
            outer = frame.f_locals.get("self")
            if isinstance(outer, _DP_WRAPPERS) and getattr(outer, "strategy", None) is self:
                name = type(outer).__name__
                raise ConfigurationError(
                    f"{name} wraps FedZipStrategy, so it would clip compressed replies, not weights: "
                    f"put FedZipStrategy outside, FedZipStrategy({name}(FedAvg(), ...), compressor=...)"
                )
            frame = frame.f_back

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._refuse_outer_dp_wrapper()
        self._current = arrays
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        codec = self.compressor.get_config()
        if self.warmup is not None:
            codec = self.warmup.config(server_round, codec)
        done: set[int] = set()
        for message in messages:
            content = message.content
            if id(content) in done:  # Flower's strategies share one RecordDict among messages
                continue
            done.add(id(content))
            keys = list(content.array_records)
            if len(keys) != 1:
                raise ConfigurationError(
                    f"FedZipStrategy needs train messages with one ArrayRecord of weights; "
                    f"{type(self.strategy).__name__} built one with {len(keys)}"
                )
            self._weights_key = keys[0]
            protocol.add_settings(content, codec, self.error_feedback, self.feedback_options, server_round)
        self._sent = {}
        stats = self._pending = RoundStats(server_round, sampled=len(messages))
        self._messages = {m.metadata.dst_node_id: m for m in messages}
        for message in messages:
            stats.node(message.metadata.dst_node_id).down_raw_bytes += content_bytes(message)
        if self.broadcaster is not None and messages:
            self.broadcaster.advance(protocol.from_record(arrays))
        for message in messages:
            node = message.metadata.dst_node_id
            previous = stats.turn(self._turns, node)
            if self.memory is not None:
                self.memory.attach(message, self.compressor)
            if self.broadcaster is None:
                continue
            form = self.broadcaster.prepare(message, self._weights_key)
            self._sent[node] = self.broadcaster.version
            stats.dense_downloads += form == "dense"
            stats.chain_downloads += form == "chain"
            stats.patch_downloads += form == "patch"
            if previous is not None and server_round - previous > 1:
                stats.returning_bytes += content_bytes(message)
        for message in messages:
            stats.node(message.metadata.dst_node_id).down_bytes += content_bytes(message)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._refuse_outer_dp_wrapper()
        pending = self._pending
        stats = pending if pending is not None and pending.round == server_round else RoundStats(server_round)
        self._pending = None
        reference = protocol.from_record(self._current if self._current is not None else ArrayRecord())
        forwarded: dict[int, Message] = {}  # reply index -> the message the inner strategy gets
        candidates: list[tuple[int, Message, bytes, tuple[float, dict[str, float]]]] = []
        configuration: list[str] = []

        replies = list(replies)
        sent = self._messages
        nodes = reply_nodes(replies, sent)

        def reject(index: int, reply: Message, reason: str, setting: bool = False) -> None:
            line = f"node {nodes[index]}: {reason}"
            log(WARNING, "FedZipStrategy: rejected a reply in round %d: %s", server_round, line)
            stats.failures.append(line)
            stats.node(nodes[index]).reason = reason
            if setting:
                configuration.append(reason)
            error = Error(code=ErrorCode.UNKNOWN, reason=f"fedzip: {reason}")
            forwarded[index] = Message(error=error, metadata=reply.metadata)

        if self.broadcaster is not None:
            answered = dict(zip(nodes, replies, strict=True))
            for node, version in self._sent.items():
                reply = answered.get(node)
                if reply is None or reply.has_error():
                    self.broadcaster.forget(node)  # it may or may not hold the new version
                else:
                    self.broadcaster.confirm(node, version)
        weighted_by = weighting_key(self.strategy)  # the metric the inner strategy weights replies by
        for index, reply in enumerate(replies):
            transfer = stats.node(nodes[index])
            transfer.answer(reply, sent.get(transfer.node))
            if reply.has_error():
                stats.failures.append(f"node {nodes[index]}: {reply.error.reason}")
                if reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION:
                    configuration.append(reply.error.reason)
                forwarded[index] = reply
                continue
            try:
                check_metrics(reply, weighted_by)
                payload, norms, layout = restore(reply, reference, self._weights_key, self.compressor)
                if layout is not None and self.memory is not None:
                    self.memory.layout = layout  # keyed payloads it keeps decode with the model's layout
            except Rejected as exc:
                reject(index, reply, str(exc), exc.configuration)
                continue
            candidates.append((index, reply, payload, norms))

        kept = []
        reasons = self._norms.screen([norms for *_, norms in candidates])
        for (index, reply, payload, _), reason in zip(candidates, reasons, strict=True):
            if reason:
                reject(index, reply, reason)
            else:
                kept.append((index, reply, payload))
        order: dict[int, bytes] = {}
        accepted = consistent(kept, weighted_by, reject)
        if self.memory is not None:
            self.memory.correct(server_round, accepted, reference, self._weights_key, weighted_by)
        for index, reply, payload in accepted:
            order[index] = payload
            transfer = stats.node(nodes[index])
            transfer.accepted = True
            transfer.up_raw_bytes += content_bytes(reply)
            stats.payload_bytes += len(payload)
            if self.on_payload is not None:
                try:
                    self.on_payload(server_round, payload)
                except Exception as exc:  # a callback's failure must not end the run
                    log(WARNING, "FedZipStrategy: on_payload failed in round %d: %r", server_round, exc)
            forwarded[index] = reply
        self.history.append(stats)
        log(
            INFO,
            "FedZipStrategy: round %d: %d/%d replies accepted, %d uplink bytes (%.1fx smaller)",
            server_round,
            stats.accepted,
            stats.replies,
            stats.uplink_bytes,
            stats.ratio,
        )
        if stats.replies and not stats.accepted and len(configuration) == stats.replies:
            reasons = "\n".join(f"  - {r}" for r in dict.fromkeys(configuration))
            raise ConfigurationError(
                f"round {server_round}: none of the {stats.replies} replies could be used, for reasons "
                f"only a setting can fix:\n{reasons}"
            )
        if stats.accepted < self.min_accepted:
            log(
                WARNING,
                "FedZipStrategy: round %d: %d replies accepted, fewer than min_accepted=%d; "
                "the model is not updated",
                server_round,
                stats.accepted,
                self.min_accepted,
            )
            return None, None
        try:
            # Averaging sums floats, so its result depends on the order of the replies, which is the
            # order they arrived in: order accepted replies by their payloads for a reproducible model.
            ranked = sorted(forwarded, key=lambda i: (i not in order, order.get(i, b""), i))
            result = self.strategy.aggregate_train(server_round, [forwarded[i] for i in ranked])
        except InconsistentMessageReplies as exc:
            log(WARNING, "FedZipStrategy: round %d not aggregated: %s", server_round, exc)
            return None, None
        stats.aggregated = True
        return as_model(result[0], reference), result[1]
