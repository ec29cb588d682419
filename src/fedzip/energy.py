"""Radio energy of a client's transfers, from the power model of Huang et al.

J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck, "A Close
Examination of Performance and Power Characteristics of 4G LTE Networks",
MobiSys 2012. While sending, a radio draws ``P = alpha_up * throughput + beta``
(mW, throughput in Mbps); an upload of ``bits`` takes ``bits / throughput``
seconds, so ``E = P * bits / throughput``. Downloads use ``alpha_down``.

The alpha/beta constants below are the values usually cited from that paper
(alpha in mW/Mbps, beta in mW); they have not been re-checked against the
paper's power-model table. The LTE throughputs are the median uplink (6 Mbps)
and downlink (13 Mbps) the paper measured; the Wi-Fi and 3G throughputs are
assumed defaults, not measurements. Every one of them is a parameter of
:class:`Link`: set your own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Link:
    """A radio link: its power model and the throughput a client gets on it."""

    name: str
    alpha_up: float  # mW per Mbps while sending
    alpha_down: float  # mW per Mbps while receiving
    beta: float  # mW, base power while the radio is active
    up_mbps: float
    down_mbps: float

    def __post_init__(self) -> None:
        for field in ("alpha_up", "alpha_down", "beta", "up_mbps", "down_mbps"):
            value = getattr(self, field)
            if not value >= 0 or (field.endswith("mbps") and value == 0):
                raise ValueError(f"{field} of link {self.name!r} must be positive, got {value!r}")

    def upload_joules(self, nbytes: int) -> float:
        """Energy (J) to send ``nbytes``."""
        return _joules(nbytes, self.alpha_up, self.beta, self.up_mbps)

    def download_joules(self, nbytes: int) -> float:
        """Energy (J) to receive ``nbytes``."""
        return _joules(nbytes, self.alpha_down, self.beta, self.down_mbps)

    def with_throughput(self, up_mbps: float | None = None, down_mbps: float | None = None) -> Link:
        return replace(self, up_mbps=up_mbps or self.up_mbps, down_mbps=down_mbps or self.down_mbps)


def _joules(nbytes: int, alpha: float, beta: float, mbps: float) -> float:
    if nbytes < 0:
        raise ValueError(f"a transfer cannot have {nbytes} bytes")
    seconds = 8 * nbytes / (mbps * 1e6)
    return (alpha * mbps + beta) / 1000 * seconds


# Power constants as cited from Huang et al. 2012; LTE throughputs are the paper's medians,
# the others assumed.
LINKS = {
    "lte": Link("lte", alpha_up=438.39, alpha_down=51.97, beta=1288.04, up_mbps=6.0, down_mbps=13.0),
    "wifi": Link("wifi", alpha_up=283.17, alpha_down=137.01, beta=132.86, up_mbps=5.0, down_mbps=12.0),
    "3g": Link("3g", alpha_up=868.98, alpha_down=122.12, beta=817.88, up_mbps=0.5, down_mbps=1.0),
}


def get_link(name: str) -> Link:
    try:
        return LINKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown link {name!r}; choose from {', '.join(LINKS)}") from None


def saved_percent(baseline: float, value: float) -> float:
    """How much smaller ``value`` is than ``baseline``, in percent."""
    return 100.0 * (1 - value / baseline) if baseline else 0.0
