"""Every compressor, under one interface and one registry."""

from ..abc import Compressor
from ..codec import FedZip
from ..registry import available, get_compressor, register

__all__ = ["Compressor", "FedZip", "available", "get_compressor", "register"]
