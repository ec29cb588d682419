"""Error feedback: what compression dropped is added to the next update."""

from __future__ import annotations

import numpy as np

from .abc import Compressor, Update, check_update, check_values


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
        """Compress ``update + residual``; what the payload drops becomes the new residual.

        Works in place on the residual: after the first call, encoding
        allocates nothing of the update's size. ``update`` is not modified.
        A ValueError (NaN/Inf, a shape change) leaves the residual as it was.
        """
        arrays = check_update(update)
        for name, array in arrays.items():
            # before anything is added: a bad update must not spoil the residual
            check_values(name, array)
            residual = self.residual.get(name)
            if residual is not None and residual.shape != array.shape:
                raise ValueError(
                    f"tensor {name!r} changed shape from {residual.shape} to {array.shape}; "
                    "call reset() when the model changes"
                )
        corrected = {}
        for name, array in arrays.items():
            residual = self.residual.get(name)
            if residual is None or residual.dtype != array.dtype or not residual.flags.writeable:
                corrected[name] = (
                    np.array(array, order="C", copy=True)
                    if residual is None
                    else (np.add(array, residual, dtype=array.dtype, casting="unsafe"))
                )
            else:
                corrected[name] = np.add(residual, array, out=residual, casting="unsafe")
        self.residual = corrected
        try:
            return self.codec.encode_subtract(corrected)
        except ValueError:
            # the sum overflowed: the residual cannot be trusted any more
            self.residual = {}
            raise

    def reset(self) -> None:
        """Forget the residual (e.g. when the model is re-initialised)."""
        self.residual = {}
