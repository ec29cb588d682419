"""Compressors by id, so a configuration names its compressor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from .abc import Compressor

_REGISTRY: dict[str, type[Compressor]] = {}
C = TypeVar("C", bound=type[Compressor])


def register(cls: C) -> C:
    """Class decorator: make ``cls`` available under ``cls.codec_id``."""
    _REGISTRY[cls.codec_id] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def compressor_class(codec_id: str) -> type[Compressor]:
    """The class registered under ``codec_id``; ValueError naming the available ids otherwise."""
    if codec_id not in _REGISTRY:
        raise ValueError(f"unknown compressor {codec_id!r}; available: {', '.join(available())}")
    return _REGISTRY[codec_id]


def get_compressor(config: str | Mapping[str, Any]) -> Compressor:
    """Build a compressor from an id (default parameters) or a config dict."""
    if isinstance(config, str):
        config = {"id": config}
    if "id" not in config:
        raise ValueError("a compressor config needs an 'id'")
    return compressor_class(config["id"]).from_config(config)
