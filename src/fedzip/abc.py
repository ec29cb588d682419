"""The interface every compressor implements, FedZip and baselines alike.

Modelled on numcodecs: a compressor's constructor arguments are its whole
configuration; ``get_config()`` returns them with the registry ``id`` and
``from_config()`` builds an equal compressor back.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from . import exact, wire
from .payload import decode
from .sparsify import peak_magnitude

Update = Mapping[str, np.ndarray]
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Compressor(ABC):
    """Turns a model update (name -> float array) into bytes and back; integer and bool tensors of
    the update travel exactly (:mod:`fedzip.exact`)."""

    codec_id: ClassVar[str]
    # Whether the method only works with its residual carried between rounds
    # (STC); Flower's FedZipStrategy then turns error feedback on by default.
    needs_error_feedback: ClassVar[bool] = False
    # Whether ||decode(encode(x))|| <= ||x|| up to float rounding, so that an
    # update clipped on the client stays clipped (client-side DP).
    norm_bounded: ClassVar[bool] = True

    @abstractmethod
    def body_encodings(self) -> frozenset[int]:
        """The tensor encoding ids this compressor writes (to recognise its payloads)."""

    @abstractmethod
    def encode(self, update: Update) -> bytes:
        """Compress ``update`` into a self-describing payload."""

    @abstractmethod
    def approximate(self, update: Update) -> dict[str, np.ndarray]:
        """What ``decode(encode(update))`` returns, without the bytes."""

    def decode(
        self,
        payload: bytes,
        max_elements: int | None = None,
        max_tensors: int | None = None,
        layout: Update | None = None,
    ) -> dict[str, np.ndarray]:
        """Inverse of :meth:`encode`; payloads describe themselves, or (keyed) need ``layout``."""
        return decode(payload, max_elements=max_elements, max_tensors=max_tensors, layout=layout)

    def encode_with_approximation(self, update: Update) -> tuple[bytes, dict[str, np.ndarray]]:
        """The payload and what it decodes to (used by error feedback)."""
        payload = self.encode(update)
        return payload, self.decode(payload, layout=update)

    def encode_subtract(self, update: dict[str, np.ndarray]) -> bytes:
        """Encode ``update`` and subtract, in place, what the payload carries.

        What is left in ``update`` is the error-feedback residual. The arrays
        must be writable. This default holds the decoded update once;
        compressors override it to work one tensor (or one sparse set) at a time.
        """
        for name, array in update.items():
            writable_flat(name, array)
        payload, sent = self.encode_with_approximation(update)
        for name, array in update.items():
            if exact.is_exact(array):  # sent as it is
                array[...] = 0
            else:
                np.subtract(array, sent.pop(name), out=array, casting="unsafe")
        return payload

    @classmethod
    def options(cls) -> list[str]:
        """The options of this compressor's config: its constructor's arguments."""
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, **{name: getattr(self, name) for name in self.options()}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Compressor:
        config = dict(config)
        codec_id = config.pop("id", cls.codec_id)
        if codec_id != cls.codec_id:
            raise ValueError(f"config is for {codec_id!r}, not {cls.codec_id!r}")
        accepted = cls.options()
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for {cls.codec_id!r}; accepted: {', '.join(accepted)}"
            )
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self.get_config().items())))

    def __repr__(self) -> str:
        config = self.get_config()
        config.pop("id")
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


def check_update(update: Update) -> dict[str, np.ndarray]:
    """Validate an update's structure and dtypes; values are checked by the codec. Integer and bool
    tensors are carried exactly (:mod:`fedzip.exact`) by every compressor."""
    if not isinstance(update, Mapping):
        raise ValueError(f"an update must be a mapping of name -> array, got {type(update).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in update.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be str, got {name!r}")
        if len(name.encode("utf-8")) > 65535:
            raise ValueError(f"tensor name {name[:40]!r}... is longer than 65535 bytes")
        array = np.asarray(value)
        if array.dtype not in wire.DTYPE_CODES:  # the dtypes the format can carry
            raise ValueError(
                f"tensor {name!r} has dtype {array.dtype}; fedzip compresses float16/32/64 tensors "
                "and carries integer and bool ones exactly: cast it first (e.g. array.astype(np.float32))"
            )
        if array.ndim > 32:
            raise ValueError(f"tensor {name!r} has {array.ndim} dimensions; at most 32 are supported")
        arrays[name] = array
    return arrays


def check_values(name: str, array: np.ndarray) -> float:
    """Largest magnitude of ``array``; ValueError for NaN/Inf or values float32 cannot hold."""
    peak = peak_magnitude(array.reshape(-1)) if array.size else 0.0
    if not math.isfinite(peak):
        raise ValueError(f"tensor {name!r} contains NaN or Inf; fix the update before encoding it")
    if peak > FLOAT32_MAX:
        raise ValueError(f"tensor {name!r} has values beyond the float32 range; scale the update down")
    return peak


def writable_flat(name: str, array: np.ndarray) -> np.ndarray:
    """A 1-D view of ``array`` for in-place updates; ValueError if there can be none."""
    if not isinstance(array, np.ndarray) or not array.flags.writeable or not array.flags.c_contiguous:
        raise ValueError(
            f"tensor {name!r} must be a writable C-contiguous numpy array to be updated in place "
            "(np.array(x, copy=True) makes one)"
        )
    return array.reshape(-1)
