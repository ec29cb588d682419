"""Error feedback: what compression dropped is added to the next update."""

from __future__ import annotations

import numpy as np

from .abc import Compressor, Update, check_update


class ErrorFeedback:
    """Stateful wrapper that carries the compression residual between encodes.

    Each :meth:`encode` compresses ``update + residual`` and keeps as the new
    residual what the payload does not carry, so nothing the sparsifier drops
    is lost for good (Seide et al. 2014; Karimireddy et al. 2019).
    """

    def __init__(self, codec: Compressor) -> None:
        self.codec = codec
        self.residual: dict[str, np.ndarray] = {}

    def encode(self, update: Update) -> bytes:
        arrays = check_update(update)
        corrected = {}
        for name, array in arrays.items():
            residual = self.residual.get(name)
            if residual is not None and residual.shape != array.shape:
                raise ValueError(
                    f"tensor {name!r} changed shape from {residual.shape} to {array.shape}; "
                    "call reset() when the model changes"
                )
            corrected[name] = array if residual is None else (array + residual).astype(array.dtype)
        payload, sent = self.codec.encode_with_approximation(corrected)
        self.residual = {name: corrected[name] - sent[name] for name in corrected}
        return payload

    def reset(self) -> None:
        """Forget the residual (e.g. when the model is re-initialised)."""
        self.residual = {}
