"""Error feedback: what compression dropped is added to the next update."""

from __future__ import annotations

import math

import numpy as np

from . import exact
from .abc import Compressor, Update, check_update, check_values


def check_options(
    momentum: float = 0.0,
    clip_norm: float | None = None,
    age_decay: float = 1.0,
    max_age: int | None = None,
    step_ahead: float = 0.0,
) -> None:
    """Raise ValueError, saying what to change, for options :class:`ErrorFeedback` does not take."""

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not (number(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    if clip_norm is not None and not (number(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm!r}")
    if not (number(age_decay) and 0 < age_decay <= 1):
        raise ValueError(f"age_decay must be a number in (0, 1], got {age_decay!r}")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1):
        raise ValueError(f"max_age must be an int >= 1 (rounds) or None, got {max_age!r}")
    if not (number(step_ahead) and 0 <= step_ahead <= 1):
        raise ValueError(f"step_ahead must be a number in [0, 1], got {step_ahead!r}")


class ErrorFeedback:
    """Stateful wrapper that carries the compression residual between encodes (of the float
    tensors: integer and bool ones are sent exactly and leave nothing over).

    Each :meth:`encode` compresses ``update + residual`` and keeps as the new
    residual what the payload does not carry, so nothing the sparsifier drops
    is lost for good (Seide et al. 2014; Karimireddy et al. 2019).

    Args:
        codec: the compressor.
        momentum: momentum correction (Deep Gradient Compression, Lin et al.
            2018): a velocity ``u = momentum * u + update`` is accumulated
            instead of the update itself, so the residual carries momentum as
            a client training with momentum would apply it. 0 turns it off.
        masking: with momentum, factor masking: the velocity and the residual
            are zeroed where the payload sent something, so entries just sent
            do not keep pushing stale momentum.
        clip_norm: scale every update down to at most this L2 norm before it
            is accumulated (local clipping, also from DGC); None: no clipping.
        age_decay: where clients are sampled (a few per round), a residual
            waits for its client's next round and goes stale: with the round
            numbers given to :meth:`encode`, a residual made ``age`` rounds ago
            is scaled by ``age_decay ** (age - 1)`` before it is added (1: kept
            as it is; a client seen every round is never scaled).
        max_age: a residual made more than this many rounds ago is dropped
            (None: never).
        step_ahead: the fraction of the residual a client adds to the model
            before it trains (:meth:`preview`), so that its gradients are taken
            near where its upload will leave the model: step-ahead partial
            error feedback (SA-PEF, Redie, Arablouei, Werner, TMLR 2026; 1 is
            step-ahead EF, 0 plain EF). What is sent is unchanged: the update
            trained from there, plus the whole residual.
    """

    def __init__(
        self,
        codec: Compressor,
        momentum: float = 0.0,
        masking: bool = True,
        clip_norm: float | None = None,
        age_decay: float = 1.0,
        max_age: int | None = None,
        step_ahead: float = 0.0,
    ) -> None:
        check_options(momentum, clip_norm, age_decay, max_age, step_ahead)
        self.codec = codec
        self.momentum = float(momentum)
        self.masking = bool(masking)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.age_decay = float(age_decay)
        self.max_age = max_age
        self.step_ahead = float(step_ahead)
        self.residual: dict[str, np.ndarray] = {}
        self.velocity: dict[str, np.ndarray] = {}
        self.made: int | None = None  # the round the residual was made in, when rounds are given
        self._aged_for: int | None = None  # the round the residual was last aged for (once a round)

    def encode(self, update: Update, server_round: int | None = None) -> bytes:
        """Compress ``update + residual``; what the payload drops becomes the new residual.

        Works in place on the residual: after the first call, encoding
        allocates nothing of the update's size (momentum, masking and clipping
        cost one transient copy). ``update`` is not modified. A ValueError
        (NaN/Inf, a shape change) leaves the state as it was. ``server_round``
        (the federated round this update is for) lets a stale residual decay
        or be dropped (``age_decay``, ``max_age``).
        """
        given = check_update(update)
        # integer and bool tensors travel exactly: nothing of them is left over or accumulated
        arrays = exact.floats(given)
        for name, array in arrays.items():
            # before anything is added: a bad update must not spoil the residual
            check_values(name, array)
            for state in (self.residual, self.velocity):
                if name in state and state[name].shape != array.shape:
                    raise ValueError(
                        f"tensor {name!r} changed shape from {state[name].shape} to {array.shape}; "
                        "call reset() when the model changes"
                    )
        if server_round is not None:
            self._age(server_round)
        if self.clip_norm is not None:
            norm = math.sqrt(sum(float(np.vdot(a, a).real) for a in arrays.values()))
            if norm > self.clip_norm:
                scale = self.clip_norm / norm
                arrays = {name: (a * scale).astype(a.dtype) for name, a in arrays.items()}
        if self.momentum:
            self.velocity = {
                name: _accumulate(self.velocity.get(name), array, self.momentum)
                for name, array in arrays.items()
            }
            arrays = self.velocity
        self.residual = {name: _accumulate(self.residual.get(name), a, 1.0) for name, a in arrays.items()}
        sent = {name: self.residual[name] if name in arrays else a.copy() for name, a in given.items()}
        try:
            payload = self.codec.encode_subtract(sent)
        except ValueError:
            # the sum overflowed: the state cannot be trusted any more
            self.reset()
            raise
        if self.momentum and self.masking:
            decoded = self.codec.decode(payload, layout=given)
            for name in arrays:
                mask = decoded[name] != 0
                self.velocity[name][mask] = 0
                self.residual[name][mask] = 0
        if server_round is not None:
            self.made = server_round
        return payload

    def preview(self, server_round: int | None = None) -> dict[str, np.ndarray]:
        """What to add to the model before training for ``server_round``: ``step_ahead`` times the
        residual, aged for that round (empty when there is none or ``step_ahead`` is 0). Train from
        ``model + preview``, then :meth:`encode` the update from that point: the residual it adds is
        the whole one, aged once."""
        if server_round is not None:
            self._age(server_round)
        if not self.step_ahead:
            return {}
        return {name: np.multiply(r, r.dtype.type(self.step_ahead)) for name, r in self.residual.items()}

    def age(self, server_round: int) -> int | None:
        """How many rounds before ``server_round`` the residual was made (None: not known)."""
        return None if self.made is None or not self.residual else server_round - self.made

    def _age(self, server_round: int) -> None:
        """Decay or drop a residual (and velocity) that waited for this client's turn."""
        if self._aged_for == server_round:
            return
        self._aged_for = server_round
        age = self.age(server_round)
        if age is None or age <= 1:
            return
        if self.max_age is not None and age > self.max_age:
            self.reset()
            return
        if self.age_decay != 1.0:
            factor = self.age_decay ** (age - 1)
            for state in (self.residual, self.velocity):
                for name, array in state.items():
                    if array.flags.writeable:
                        array *= array.dtype.type(factor)
                    else:
                        state[name] = array * array.dtype.type(factor)

    def reset(self) -> None:
        """Forget the residual and velocity (e.g. when the model is re-initialised)."""
        self.residual = {}
        self.velocity = {}
        self.made = None
        self._aged_for = None


def _accumulate(state: np.ndarray | None, array: np.ndarray, decay: float) -> np.ndarray:
    """``decay * state + array`` in the memory of ``state`` when it can be reused."""
    if state is None:
        return np.array(array, order="C", copy=True)
    if state.dtype != array.dtype or not state.flags.writeable or not state.flags.c_contiguous:
        return np.add(decay * state, array, dtype=array.dtype, casting="unsafe")
    if decay != 1.0:
        state *= decay
    return np.add(state, array, out=state, casting="unsafe")
