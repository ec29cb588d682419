"""Radio energy of a client's transfers, from the power model of Huang et al.

J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck, "A Close
Examination of Performance and Power Characteristics of 4G LTE Networks",
MobiSys 2012. While sending, a radio draws ``P = alpha_up * throughput + beta``
(mW, throughput in Mbps); an upload of ``bits`` takes ``bits / throughput``
seconds, so ``E = P * bits / throughput``. Downloads use ``alpha_down``.

The same paper found that for small transfers the radio's state machine,
not the bytes, sets the energy: leaving idle costs a *promotion* (P_pro for
T_pro) and after the last byte the radio stays in a high-power *tail* (P_tail
for T_tail, 11.6 s on LTE) before it sleeps. :meth:`Link.round_joules` models
a client's round as a radio spends it: download, local training, upload, with
the download's tail cut short when the upload starts within it.

Constants: alpha, beta, promotion and tail values are the ones usually cited
from the paper's power-model table (Table 3: LTE, 3G, Wi-Fi; alpha in
mW/Mbps, powers in mW, times in s); they have not been re-checked against the
paper's text, which was not available here. The LTE throughputs are the median
uplink (6 Mbps) and downlink (13 Mbps) the paper measured; the Wi-Fi and 3G
throughputs are assumed defaults, not measurements. Every one of them is a
parameter of :class:`Link`: set your own.
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
    promotion_mw: float = 0.0  # power while the radio wakes up from idle
    promotion_s: float = 0.0
    tail_mw: float = 0.0  # power in the tail after a transfer
    tail_s: float = 0.0

    def __post_init__(self) -> None:
        fields = ("alpha_up", "alpha_down", "beta", "up_mbps", "down_mbps")
        for field in (*fields, "promotion_mw", "promotion_s", "tail_mw", "tail_s"):
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

    def round_joules(self, down_bytes: int, up_bytes: int, train_seconds: float) -> RoundEnergy:
        """A client's radio energy in one round: download, ``train_seconds`` of training, upload.

        The radio starts idle: the download pays a promotion. If the upload
        starts before the download's tail ends, it needs no promotion and the
        tail is cut short there; otherwise the tail runs out and the upload
        pays a promotion of its own. After the upload the whole tail is spent.
        A transfer of zero bytes does not wake the radio.
        """
        if train_seconds < 0:
            raise ValueError(f"training time cannot be negative, got {train_seconds}")
        promotion = self.promotion_mw / 1000 * self.promotion_s
        tail_power = self.tail_mw / 1000
        energy = RoundEnergy(self.download_joules(down_bytes), self.upload_joules(up_bytes), 0.0, 0.0)
        if down_bytes and up_bytes:
            gap = min(train_seconds, self.tail_s)
            energy.promotion = promotion * (1 if train_seconds < self.tail_s else 2)
            energy.tail = tail_power * (gap + self.tail_s)
        elif down_bytes or up_bytes:
            energy.promotion = promotion
            energy.tail = tail_power * self.tail_s
        return energy


@dataclass
class RoundEnergy:
    """Where a client's radio energy of one round goes (J)."""

    download: float
    upload: float
    promotion: float
    tail: float

    @property
    def transfer(self) -> float:
        """Download and upload alone: the linear model without promotion and tail."""
        return self.download + self.upload

    @property
    def total(self) -> float:
        return self.download + self.upload + self.promotion + self.tail


def _joules(nbytes: int, alpha: float, beta: float, mbps: float) -> float:
    if nbytes < 0:
        raise ValueError(f"a transfer cannot have {nbytes} bytes")
    seconds = 8 * nbytes / (mbps * 1e6)
    return (alpha * mbps + beta) / 1000 * seconds


# Power-model constants as cited from Huang et al. 2012, Table 3 (alpha, beta, promotion
# and tail; not re-checked against the paper here); LTE throughputs are the paper's medians,
# the others assumed.
LINKS = {
    "lte": Link(
        "lte", 438.39, 51.97, 1288.04, up_mbps=6.0, down_mbps=13.0,
        promotion_mw=1210.7, promotion_s=0.2601, tail_mw=1060.0, tail_s=11.576,
    ),
    "wifi": Link(
        "wifi", 283.17, 137.01, 132.86, up_mbps=5.0, down_mbps=12.0,
        promotion_mw=124.4, promotion_s=0.0791, tail_mw=119.3, tail_s=0.2381,
    ),
    "3g": Link(
        "3g", 868.98, 122.12, 817.88, up_mbps=0.5, down_mbps=1.0,
        promotion_mw=659.4, promotion_s=0.5821, tail_mw=803.9, tail_s=8.0882,
    ),
}  # fmt: skip


def get_link(name: str) -> Link:
    try:
        return LINKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown link {name!r}; choose from {', '.join(LINKS)}") from None


def saved_percent(baseline: float, value: float) -> float:
    """How much smaller ``value`` is than ``baseline``, in percent."""
    return 100.0 * (1 - value / baseline) if baseline else 0.0
