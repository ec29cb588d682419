"""Error feedback: what compression dropped is added to the next update."""

from __future__ import annotations

import math

import numpy as np

from .abc import Compressor, Update, check_update, check_values


class ErrorFeedback:
    """Stateful wrapper that carries the compression residual between encodes.

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
    """

    def __init__(
        self,
        codec: Compressor,
        momentum: float = 0.0,
        masking: bool = True,
        clip_norm: float | None = None,
    ) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if clip_norm is not None and (
            isinstance(clip_norm, bool) or not isinstance(clip_norm, int | float) or not clip_norm > 0
        ):
            raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm!r}")
        self.codec = codec
        self.momentum = float(momentum)
        self.masking = bool(masking)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.residual: dict[str, np.ndarray] = {}
        self.velocity: dict[str, np.ndarray] = {}

    def encode(self, update: Update) -> bytes:
        """Compress ``update + residual``; what the payload drops becomes the new residual.

        Works in place on the residual: after the first call, encoding
        allocates nothing of the update's size (momentum, masking and clipping
        cost one transient copy). ``update`` is not modified. A ValueError
        (NaN/Inf, a shape change) leaves the state as it was.
        """
        arrays = check_update(update)
        for name, array in arrays.items():
            # before anything is added: a bad update must not spoil the residual
            check_values(name, array)
            for state in (self.residual, self.velocity):
                if name in state and state[name].shape != array.shape:
                    raise ValueError(
                        f"tensor {name!r} changed shape from {state[name].shape} to {array.shape}; "
                        "call reset() when the model changes"
                    )
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
        try:
            payload = self.codec.encode_subtract(self.residual)
        except ValueError:
            # the sum overflowed: the state cannot be trusted any more
            self.reset()
            raise
        if self.momentum and self.masking:
            sent = self.codec.decode(payload)
            for name, values in sent.items():
                mask = values != 0
                self.velocity[name][mask] = 0
                self.residual[name][mask] = 0
        return payload

    def reset(self) -> None:
        """Forget the residual and velocity (e.g. when the model is re-initialised)."""
        self.residual = {}
        self.velocity = {}


def _accumulate(state: np.ndarray | None, array: np.ndarray, decay: float) -> np.ndarray:
    """``decay * state + array`` in the memory of ``state`` when it can be reused."""
    if state is None:
        return np.array(array, order="C", copy=True)
    if state.dtype != array.dtype or not state.flags.writeable or not state.flags.c_contiguous:
        return np.add(decay * state, array, dtype=array.dtype, casting="unsafe")
    if decay != 1.0:
        state *= decay
    return np.add(state, array, out=state, casting="unsafe")
