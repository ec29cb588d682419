"""Flower integration: a client mod that uploads compressed payloads, a
server strategy wrapper that decodes them, and a traffic tracker for any app.

    from fedzip.flower import FedZipStrategy, TrafficTracker, fedzip_mod

    client_app = ClientApp(mods=[fedzip_mod])
    strategy = FedZipStrategy(FedAvg(), compressor=FedZip(keep=0.01), error_feedback=True)
    strategy = TrafficTracker(strategy, out="traffic")  # optional: bytes and energy per node
"""

from .accounting import RoundStats, Transfer
from .mod import fedzip_mod, shared_start_mod
from .strategy import ConfigurationError, FedZipStrategy
from .traffic import TrafficTracker

__all__ = [
    "ConfigurationError",
    "FedZipStrategy",
    "RoundStats",
    "TrafficTracker",
    "Transfer",
    "fedzip_mod",
    "shared_start_mod",
]
