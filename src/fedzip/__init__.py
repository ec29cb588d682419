"""fedzip: compressed uploads for federated learning (FedZip and baselines)."""

from .abc import Compressor
from .codec import FedZip
from .compressors import NoCompression
from .errors import FormatError
from .feedback import ErrorFeedback
from .payload import Inspection, TensorReport, decode, inspect
from .records import transcode
from .registry import available, get_compressor, register

__version__ = "0.1.0"

__all__ = [
    "Compressor",
    "ErrorFeedback",
    "FedZip",
    "FormatError",
    "Inspection",
    "NoCompression",
    "TensorReport",
    "__version__",
    "available",
    "decode",
    "get_compressor",
    "inspect",
    "register",
    "transcode",
]
