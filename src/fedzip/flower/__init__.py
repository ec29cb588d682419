"""Flower integration: a client mod that uploads compressed payloads and a
server strategy wrapper that decodes them.

    from fedzip.flower import FedZipStrategy, fedzip_mod

    client_app = ClientApp(mods=[fedzip_mod])
    strategy = FedZipStrategy(FedAvg(), compressor=FedZip(keep=0.01), error_feedback=True)
"""

from .accounting import RoundStats
from .mod import fedzip_mod, shared_start_mod
from .strategy import ConfigurationError, FedZipStrategy

__all__ = ["ConfigurationError", "FedZipStrategy", "RoundStats", "fedzip_mod", "shared_start_mod"]
