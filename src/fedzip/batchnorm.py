"""BatchNorm's running variances, which the server keeps positive.

A variance is positive, and so is the average of the clients'; but a lossy upload of a small one
can cross zero, and one negative running variance turns every evaluation of the model into NaN
(measured: 12 of a residual CNN's first 50 rounds at 1000x evaluated at chance, NaN loss; the
clients, training on batch statistics, recovered the round after).
"""

from __future__ import annotations

import numpy as np

# How the names of running variances end: PyTorch's, then Keras's.
VARIANCES = ("running_var", "moving_variance")


def is_variance(name: str) -> bool:
    """Whether tensor ``name`` is a BatchNorm running variance."""
    return name.endswith(VARIANCES)


def positive_variance(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``new`` where it is positive; elsewhere half of ``old``: the way the clients pointed, not past
    zero (``old`` not positive either: the smallest positive value of ``new``, or 1). ``new`` itself
    when nothing is to change."""
    bad = ~(new > 0)
    if not bad.any():
        return new
    positive = new[~bad]
    fallback = positive.min() if positive.size else 1.0
    halves = np.where(old > 0, old / 2, fallback)
    return np.where(bad, halves, new).astype(new.dtype)
