"""Every compressor, under one interface and one registry."""

from ..abc import Compressor
from ..codec import FedZip
from ..registry import available, get_compressor, register
from .raw import NoCompression

__all__ = ["Compressor", "FedZip", "NoCompression", "available", "get_compressor", "register"]
